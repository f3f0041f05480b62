"""The one value that means "this sample has no label for this head"."""

#: A per-sample label that drops out of a head's loss and metrics: empty manifest cells and
#: blanked synthetic labels read as this, and the losses ignore it (the PyTorch
#: ``ignore_index`` convention).
MISSING_LABEL = -100
