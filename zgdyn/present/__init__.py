"""What people read: REPORT.md with its computed conclusions, every figure, and the
benchmarks."""
