"""Quality evaluation of the engines: LR/HR image sets, degradations, scores and tables."""
