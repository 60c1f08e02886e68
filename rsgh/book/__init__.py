"""The book: experiments, Dask scheduling, studies, tables, figures and the reproduction of every page."""
