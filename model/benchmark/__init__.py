"""Speed and memory of the engines and of their peers, measured the same way in one run."""
