"""``gaaf-reproduce``: the paper's MNIST study in one command (command line in :mod:`.main`)."""
