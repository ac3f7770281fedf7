"""``gaaf-tune``: Optuna hyper-parameter search over any ``gaaf-fit`` config (command line in :mod:`.main`)."""
