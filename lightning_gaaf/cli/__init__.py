"""Console entry points: gaaf-fit, gaaf-report, gaaf-reproduce."""
