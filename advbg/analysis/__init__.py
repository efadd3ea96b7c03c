"""What the stored outcomes mean: universal backgrounds (ASR, union, greedy cover), evaluation on every background
variant, and the plots."""
