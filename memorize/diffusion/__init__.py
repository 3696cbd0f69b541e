"""Noise schedules and parameterizations in the EDM form ``x_sigma = x0 + sigma * eps``."""

from memorize.diffusion.precond import (PARAMETERIZATIONS, Denoiser, coefficients, denoised_from_output,
                                        network_target)
from memorize.diffusion.schedules import (karras_sigmas, sample_training_sigma, sampling_sigmas,
                                          vp_cosine_sigma, vp_linear_sigma, vp_sigmas)

__all__ = ["PARAMETERIZATIONS", "Denoiser", "coefficients", "denoised_from_output", "karras_sigmas",
           "network_target", "sample_training_sigma", "sampling_sigmas", "vp_cosine_sigma", "vp_linear_sigma",
           "vp_sigmas"]
