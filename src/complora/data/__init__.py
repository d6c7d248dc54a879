"""The real few-shot benchmarks: where they come from, how they are fetched, checked and laid out."""
