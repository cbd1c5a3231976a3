"""spark-submit entry point: extract a model catalog into Delta tables.

    spark-submit jobs/extract.py                      # demo zoo, local Spark, ./warehouse
    spark-submit jobs/extract.py --catalog models.csv --warehouse ./warehouse [--database filterdb]
"""
import sys

from filterspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
