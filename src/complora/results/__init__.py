"""From the runs' metrics.json files to the tables, comparisons, plots and summary a person reads."""
