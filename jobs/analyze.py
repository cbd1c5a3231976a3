"""spark-submit entry point: PCA basis, grouped coefficient histograms and shifts as Delta tables.

    spark-submit jobs/analyze.py                      # ./warehouse, default dimensions
    spark-submit jobs/analyze.py --warehouse ./warehouse --by task,depth_decile --where "family = 'plaincnn'"
"""
import sys

from filterspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
