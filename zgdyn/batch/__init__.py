"""Many runs at once: suites (`zgdyn reproduce`), sweeps over grids, and the scorecards
that compare them."""
