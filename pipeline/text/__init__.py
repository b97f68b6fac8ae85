"""Arabic text: normalisation, sentence segmentation, model preprocessing."""
