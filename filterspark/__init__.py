"""filterspark: CNN filter extraction and analysis on Spark + Delta Lake."""
__version__ = "0.1.0"
