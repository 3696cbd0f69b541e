"""Closed-form denoisers: the empirical (memorizing) one and analytic generalizing references.

All follow the denoiser interface ``D(x, sigma) -> x0_hat`` with ``x`` of shape
(B, ...) and ``sigma`` a scalar, (B,) or (B, 1, ..., 1) tensor.
"""

from __future__ import annotations

import numpy as np
import torch

from memorize.models.common import NULL_LABEL


def _flat_sigma(sigma: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """sigma as a (B, 1) column in the dtype/device of ``like``."""
    return torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1, 1).expand(batch, 1)


def _check_width(x: torch.Tensor, width: int, name: str) -> None:
    """A batch of another item shape than the training set's (8 x 8 images to a 28 x 28 set) is named."""
    if x.numel() != len(x) * width:
        raise ValueError(f"the {name} denoiser takes items of {width} values, as its training set; got a batch of "
                         f"shape {tuple(x.shape)}")


class EmpiricalDenoiser:
    """The exact minimizer of the denoising loss on the training set ``{x_i}`` (N items):

        D*(x, sigma) = sum_i w_i x_i,   w = softmax_i(-||x - x_i||^2 / (2 sigma^2))

    (Ma et al., ch. 3, eq. 3.3.3; Karras et al. 2022, eq. 57). Dropping ``||x||^2``
    (constant in i), the logits are ``(x . x_i - ||x_i||^2 / 2) / sigma^2``: attention
    with Q = x and K = V = the training set. The softmax is computed over chunks
    of ``chunk_size`` training items with a running maximum and rescaled running
    sums (online log-sum-exp; Milakov & Gimelshein 2018), so memory is
    O(B x chunk) beyond the training set itself, never O(B x N).

    ``dtype`` float64 (default) keeps the small-sigma limit exact: float32
    cancellation in ``x . x_i`` can pick the wrong neighbour of near-copies. To
    shrink that cancellation, queries and training set are centred on the
    training mean first (the softmax over distances is translation-invariant).
    The centred training set is the one copy held, on the training set's device.
    """

    def __init__(self, train: torch.Tensor, chunk_size: int = 4096, dtype: torch.dtype = torch.float64):
        if len(train) < 1:
            raise ValueError("empirical_denoiser: the training set is empty")
        flat = train.reshape(len(train), -1)
        chunks = [slice(s, s + chunk_size) for s in range(0, len(flat), chunk_size)]
        # Built chunk by chunk, so the only full-size allocation is the centred copy itself.
        total = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
        for c in chunks:
            total += flat[c].to(torch.float64).sum(0)
        self.mean = (total / len(flat)).to(dtype)
        self.train = torch.empty(flat.shape, dtype=dtype, device=flat.device)
        self.half_sq_norms = torch.empty(len(flat), dtype=dtype, device=flat.device)
        for c in chunks:
            self.train[c] = flat[c].to(dtype) - self.mean
            self.half_sq_norms[c] = 0.5 * self.train[c].square().sum(1)
        self.chunk_size, self.dtype = chunk_size, dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_width(x, self.train.shape[1], "empirical")
        queries = x.reshape(len(x), self.train.shape[1]).to(self.train.device, self.dtype) - self.mean
        inv_var = 1.0 / _flat_sigma(sigma, len(x), queries) ** 2  # (B, 1)
        running_max = torch.full((len(x), 1), -torch.inf, dtype=self.dtype, device=queries.device)
        running_sum = torch.zeros_like(running_max)
        acc = torch.zeros_like(queries)
        for start in range(0, len(self.train), self.chunk_size):
            keys = self.train[start:start + self.chunk_size]
            logits = (queries @ keys.T - self.half_sq_norms[start:start + self.chunk_size]) * inv_var
            new_max = torch.maximum(running_max, logits.amax(1, keepdim=True))
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            running_sum = running_sum * rescale + weights.sum(1, keepdim=True)
            acc = acc * rescale + weights @ keys
            running_max = new_max
        return (acc / running_sum + self.mean).reshape(x.shape).to(x.device, x.dtype)


def empirical_denoiser(train: torch.Tensor, chunk_size: int = 4096, dtype: torch.dtype = torch.float64) -> EmpiricalDenoiser:
    """The empirical denoiser of ``train`` (see :class:`EmpiricalDenoiser`)."""
    return EmpiricalDenoiser(train, chunk_size, dtype)


class GaussianDenoiser:
    """Posterior mean for data ``x0 ~ N(mu, Sigma)`` (the Wiener filter):

        D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^{-1} (x - mu)
                    = mu + U diag(lambda / (lambda + sigma^2)) U^T (x - mu)

    with ``Sigma = U diag(lambda) U^T``. A low-rank Sigma (lambda_j = 0) is handled:
    those directions are shrunk to the mean.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        self.mean = mean.reshape(-1).double()
        eigvals, self.basis = torch.linalg.eigh(cov.double())
        self.eigvals = eigvals.clamp(min=0.0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_width(x, len(self.mean), "Gaussian")
        centered = x.reshape(len(x), len(self.mean)).double() - self.mean
        shrink = self.eigvals / (self.eigvals + _flat_sigma(sigma, len(x), centered) ** 2)  # (B, D)
        out = self.mean + ((centered @ self.basis) * shrink) @ self.basis.T
        return out.reshape(x.shape).to(x.dtype)


def gaussian_denoiser(train: torch.Tensor) -> GaussianDenoiser:
    """The Gaussian denoiser of ``train``'s empirical mean and (biased) covariance."""
    if len(train) < 1:
        raise ValueError("gaussian_denoiser: the training set is empty")
    flat = train.reshape(len(train), -1).double()
    mean = flat.mean(0)
    centered = flat - mean
    return GaussianDenoiser(mean, centered.T @ centered / len(flat))


class GaussianMixtureDenoiser:
    """Posterior mean for data from a known mixture ``sum_k w_k N(mu_k, Sigma_k)``:

        D(x, sigma) = sum_k r_k(x) [mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k)],
        r_k(x) = w_k N(x; mu_k, Sigma_k + sigma^2 I) / sum_j w_j N(x; mu_j, Sigma_j + sigma^2 I)

    (Ma et al., ch. 3, Example 3.3). Each covariance is diagonalised once,
    ``Sigma_k = U_k diag(lambda_k) U_k^T``, so every sigma costs only matrix-vector work;
    low-rank components are fine for sigma > 0.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor):
        self.log_weights = torch.log(weights.double())
        self.means = means.double()
        eigvals, self.bases = torch.linalg.eigh(covs.double())  # (K, D), (K, D, D)
        self.eigvals = eigvals.clamp(min=0.0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double()
        var = _flat_sigma(sigma, len(x), flat) ** 2  # (B, 1)
        centered = flat[:, None, :] - self.means[None]  # (B, K, D)
        coords = torch.einsum("bkd,kde->bke", centered, self.bases)  # in each component's eigenbasis
        total_var = self.eigvals[None] + var[:, :, None]  # (B, K, D)
        log_density = -0.5 * ((coords**2 / total_var).sum(-1) + torch.log(total_var).sum(-1))
        resp = torch.softmax(self.log_weights + log_density, dim=1)  # (B, K); the 2 pi terms cancel
        shrunk = torch.einsum("bke,kde->bkd", coords * self.eigvals[None] / total_var, self.bases)
        out = (resp[:, :, None] * (self.means[None] + shrunk)).sum(1)
        return out.reshape(x.shape).to(x.dtype)


class ClassConditionalDenoiser:
    """The closed-form denoiser of each class: ``D(x, sigma, c)`` is the denoiser ``build`` makes of the
    training items with label ``c``, and ``c = NULL_LABEL`` (or no labels) the one of all of them, the
    unconditional ``D(x, sigma, none)`` that classifier-free guidance contrasts with.

    With ``build = empirical_denoiser`` this is Ma et al. ch. 3's eq. 3.3.3 restricted to one class,
    ``D*(x, sigma, c) = sum_{i: y_i = c} w_i x_i`` with the softmax taken over that class only: the exact
    minimizer of the conditional denoising loss on the training set, so its samples copy training items of
    the requested class. With ``build = gaussian_denoiser`` it is the class-conditional Gaussian (Wiener
    filter of each class's mean and covariance). A batch is split by label and each part sent to its class.
    """

    def __init__(self, build, train: torch.Tensor, labels: torch.Tensor):
        if len(labels) != len(train):
            raise ValueError(f"class-conditional denoiser: {len(labels)} labels for {len(train)} training items")
        self.unconditional = build(train)
        self.per_class = {int(c): build(train[labels == c]) for c in torch.unique(labels)}
        self._grouped: list[tuple] = []  # the last two labels tensors asked for, each with its key and rows by class

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return self.unconditional(x, sigma)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)  # float64: a float stays exact
        sigma = sigma.expand(len(x)) if sigma.numel() == 1 else sigma.reshape(len(x))
        out = torch.empty_like(x)
        for c, rows in self._rows(labels, x.device):
            if c == NULL_LABEL:
                denoiser = self.unconditional
            elif c in self.per_class:
                denoiser = self.per_class[c]
            else:
                raise ValueError(f"class {c} has no training items in this subset (classes present: "
                                 f"{', '.join(map(str, sorted(self.per_class)))})")
            out[rows] = denoiser(x[rows], sigma[rows])
        return out

    def _rows(self, labels: torch.Tensor, device: torch.device) -> list[tuple[int, torch.Tensor]]:
        """:func:`class_rows` of ``labels``, kept for the next calls: a sampler or a sweep over noise levels
        asks with the same labels (the same memory) every time, and a guided one with those and the null
        labels in turn, so on a GPU they are read on the host once, not at every step. Each tensor kept is
        held, so its memory cannot become another tensor's; its version counter changes with every write
        into that memory."""
        if capturing(device):  # a graph would keep this batch's grouping for every later batch of its shape
            raise RuntimeError("a class-conditional closed-form denoiser groups each batch by class on the host: "
                               "it cannot be captured in a CUDA graph")
        key = (labels.data_ptr(), labels._version, labels.dtype, tuple(labels.shape), labels.stride(), labels.device,
               device)
        for _, seen, rows in self._grouped:
            if seen == key:
                return rows
        self._grouped = [*self._grouped[-1:], (labels, key, class_rows(labels, device))]
        return self._grouped[-1][2]


def capturing(device: torch.device) -> bool:
    """Whether work on ``device`` is being captured in a CUDA graph (never on another device)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def class_rows(labels: torch.Tensor, device: torch.device | str) -> list[tuple[int, torch.Tensor]]:
    """Each class among ``labels`` (ascending) with the positions of its items, ascending, as an index
    tensor on ``device``: one read of ``labels`` on the host, where indexing by a boolean mask per class
    would be a read (a wait for the GPU) per class and per use."""
    values = np.asarray(labels.reshape(-1).tolist(), dtype=np.int64)
    return [(int(c), torch.as_tensor(np.flatnonzero(values == c), device=device)) for c in np.unique(values)]


def class_conditional_empirical_denoiser(train: torch.Tensor, labels: torch.Tensor) -> ClassConditionalDenoiser:
    """The empirical denoiser of each class of ``train`` (:class:`ClassConditionalDenoiser`)."""
    return ClassConditionalDenoiser(empirical_denoiser, train, labels)


def class_conditional_gaussian_denoiser(train: torch.Tensor, labels: torch.Tensor) -> ClassConditionalDenoiser:
    """The Gaussian denoiser of each class of ``train`` (:class:`ClassConditionalDenoiser`)."""
    return ClassConditionalDenoiser(gaussian_denoiser, train, labels)
