"""Using fooling backgrounds for training: export, the compositing augmentation Dataset, and fine-tuning."""
