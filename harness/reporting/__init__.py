"""Reporting: results files in, tables, figures and comparisons out. Imports neither torch nor pytest."""
