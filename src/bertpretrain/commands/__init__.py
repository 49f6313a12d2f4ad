"""The commands' argparse and printing, around the library's functions."""
