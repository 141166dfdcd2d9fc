"""The MegaSR model: CSM and MSFM installed into a ControlNet and a frozen SD-2 U-Net,
the tiled sampling pipeline and the checkpoint format (see docs/megasr-checkpoint.md)."""
