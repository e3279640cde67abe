"""Tools around the core and the search: demo, demo data, benchmark, evaluation, overhead timing."""
