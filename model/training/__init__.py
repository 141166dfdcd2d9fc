"""Training: data, prior-guided fine-tuning of the extractors and CLIP, the MegaSR trainer."""
