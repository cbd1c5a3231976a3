"""spark-submit entry point: import the published CNN Filter DB (``dataset.h5``) into Delta tables.

    spark-submit jobs/import_filterdb.py --h5 /data/dataset.h5 --warehouse ./warehouse [--normalise-tasks]
"""
import sys

from filterspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["import-filterdb", *sys.argv[1:]]))
