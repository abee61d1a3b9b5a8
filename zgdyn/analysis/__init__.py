"""What is measured on runs: Fourier decomposition, γ(m), Hessians and their fast
products, stability and perturbations, sharpness along a run, collapse events and fits,
the rival mechanisms' verdicts, and `analyze` that stores them beside the run."""
