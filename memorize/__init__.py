"""memorize: memorization-vs-generalization experiments on diffusion models.

Noise convention (EDM, Karras et al. 2022): ``x_sigma = x0 + sigma * eps``. A
denoiser is any callable ``D(x, sigma) -> x0_hat`` estimating ``E[x0 | x]``.
"""

__version__ = "0.1.0"
