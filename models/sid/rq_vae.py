"""RQ-VAE tokenizer (TIGER, Rajput et al. 2023, "Recommender Systems with Generative Retrieval").

An MLP encoder maps an item embedding to a latent z; L residual codebooks
quantize it (code l = nearest codeword to what levels < l left over); an MLP
decoder reconstructs the embedding from the sum of the chosen codewords.
Trained with reconstruction loss + codebook loss + β·commitment loss
(van den Oord et al. 2017), straight-through gradients, k-means
initialisation of every codebook on the first forward pass (TIGER §3.1), and
dead-code restarts (codes unused for an epoch are moved onto current
residuals; Zeghidour et al. 2021, SoundStream) so utilisation stays high.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np
import torch
from torch import nn

from models.sid.dedup import default_dedup_size
from models.sid.tokenizer import auto_codebook_size, check_embeddings, codebooks_version, l2_normalize

KIND = "rq_vae"


@dataclass(frozen=True)
class RQVAEConfig:
    """Defaults follow TIGER scaled to small catalogs: latent 32, β = 0.25, 3 levels.

    ``codebook_size=0`` picks K from the catalog size (models.sid.tokenizer.auto_codebook_size);
    ``dedup_size=0`` sizes the de-duplication level from the fitted collisions.
    """

    levels: int = 3
    codebook_size: int = 0
    latent_dim: int = 32
    hidden: tuple[int, ...] = (256, 128)
    beta: float = 0.25
    epochs: int = 150
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    dead_code_restart: bool = True
    dedup_size: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 8:
            raise ValueError(f"RQVAEConfig.levels={self.levels} must be in [1, 8] (3 is the usual choice)")
        if self.codebook_size < 0 or self.codebook_size == 1:
            raise ValueError(f"RQVAEConfig.codebook_size={self.codebook_size} must be 0 (auto) or >= 2")
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"RQVAEConfig latent_dim={self.latent_dim}, hidden={self.hidden} must be positive")
        if not self.beta >= 0:
            raise ValueError(f"RQVAEConfig.beta={self.beta} must be >= 0 (TIGER uses 0.25)")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"RQVAEConfig epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr} "
                             "must be positive")
        if self.dedup_size < 0:
            raise ValueError(f"RQVAEConfig.dedup_size={self.dedup_size} must be 0 (auto) or positive")


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _Net(nn.Module):
    def __init__(self, dim: int, cfg: RQVAEConfig, k: int):
        super().__init__()
        self.encoder = _mlp([dim, *cfg.hidden, cfg.latent_dim])
        self.decoder = _mlp([cfg.latent_dim, *reversed(cfg.hidden), dim])
        self.codebooks = nn.Parameter(torch.zeros(cfg.levels, k, cfg.latent_dim))   # [L, K, Dl]

    def quantize(self, z: torch.Tensor, n_last: int = 1):
        """z [N, Dl] -> (codes [N, L], z_hat [N, Dl], residuals per level [L, N, Dl], last [N, n_last])."""
        resid, z_hat = z, torch.zeros_like(z)
        codes, resids, last = [], [], None
        for lvl in range(self.codebooks.shape[0]):
            cb = self.codebooks[lvl]                                    # [K, Dl]
            d = torch.cdist(resid.detach(), cb.detach())               # [N, K]
            if lvl == self.codebooks.shape[0] - 1 and n_last > 1:
                last = d.topk(n_last, dim=1, largest=False).indices
            idx = d.argmin(1)
            e = cb[idx]
            resids.append(resid)
            codes.append(idx)
            z_hat = z_hat + e
            resid = resid - e
        return torch.stack(codes, 1), z_hat, resids, last


class RQVAE:
    """Residual-quantised VAE tokenizer.  fit(emb [N, E]); encode -> codes [N, L]; decode -> [N, E]."""

    def __init__(self, config: RQVAEConfig = RQVAEConfig()):
        self.config = config
        self.net: _Net | None = None
        self.dedup_size = 0
        self.version = ""
        self._dim = 0
        self.history: list[dict] = []

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def _need_fit(self) -> _Net:
        if self.net is None:
            raise RuntimeError("RQVAE is not fitted; call fit(embeddings) or load a state first")
        return self.net

    @property
    def dim(self) -> int:
        self._need_fit()
        return self._dim

    @property
    def level_sizes(self) -> tuple[int, ...]:
        cb = self._need_fit().codebooks
        return (int(cb.shape[1]),) * int(cb.shape[0])

    @property
    def sid_level_sizes(self) -> tuple[int, ...]:
        return self.level_sizes + (self.dedup_size,)

    # -- training --------------------------------------------------------------------------
    @staticmethod
    def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return km.centroids

    def fit(self, emb: np.ndarray) -> "RQVAE":
        cfg = self.config
        x_np = l2_normalize(check_embeddings(emb))
        n, dim = x_np.shape
        k = cfg.codebook_size or auto_codebook_size(n)
        if n < k:
            raise ValueError(f"{n} items cannot fit a codebook of {k} codes; "
                             "give more items or a smaller RQVAEConfig.codebook_size")
        dev = torch.device(cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        net = _Net(dim, cfg, k).to(dev)
        self._dim = dim
        x = torch.from_numpy(x_np).to(dev)                                  # [N, E]
        # k-means initialisation of each level on the untrained encoder's residuals (TIGER §3.1)
        with torch.no_grad():
            resid = net.encoder(x)
            for lvl in range(cfg.levels):
                cents = torch.from_numpy(self._kmeans(resid.cpu().numpy(), k, cfg.seed + lvl)).to(dev)
                net.codebooks[lvl] = cents
                resid = resid - cents[torch.cdist(resid, cents).argmin(1)]
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history = []
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            used = torch.zeros(cfg.levels, k, dtype=torch.long, device=dev)
            tot = {"recon": 0.0, "codebook": 0.0, "commit": 0.0}
            last_resids = None
            for s in range(0, n, cfg.batch_size):
                xb = x[perm[s:s + cfg.batch_size]]                          # [B, E]
                z = net.encoder(xb)                                          # [B, Dl]
                codes, z_hat, resids, _ = net.quantize(z)
                cb_loss = sum(((r.detach() - net.codebooks[l][codes[:, l]]) ** 2).sum(1).mean()
                              for l, r in enumerate(resids))
                commit = sum(((r - net.codebooks[l][codes[:, l]].detach()) ** 2).sum(1).mean()
                             for l, r in enumerate(resids))
                z_q = z + (z_hat - z).detach()                              # straight-through
                recon = ((net.decoder(z_q) - xb) ** 2).sum(1).mean()
                loss = recon + cb_loss + cfg.beta * commit
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for l in range(cfg.levels):
                    used[l].index_add_(0, codes[:, l], torch.ones_like(codes[:, l]))
                last_resids = [r.detach() for r in resids]
                nb = xb.shape[0] / n
                tot["recon"] += recon.item() * nb
                tot["codebook"] += cb_loss.item() * nb
                tot["commit"] += commit.item() * nb
            restarted = 0
            if cfg.dead_code_restart and epoch < cfg.epochs - 1:
                with torch.no_grad():
                    for l in range(cfg.levels):
                        dead = (used[l] == 0).nonzero().flatten()
                        if dead.numel():
                            pool = last_resids[l]
                            pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=gen).to(dev)
                            net.codebooks[l, dead] = pool[pick] + 1e-3 * torch.randn(
                                dead.numel(), pool.shape[1], generator=gen).to(dev)
                            restarted += int(dead.numel())
            tot["restarted"] = restarted
            self.history.append(tot)
        net.eval()
        self.net = net
        self.version = codebooks_version(KIND, [p.detach().cpu().numpy() for p in net.state_dict().values()])
        self.dedup_size = cfg.dedup_size or default_dedup_size(self.encode(x_np))
        return self

    # -- encode / decode -------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, emb: np.ndarray, n_last: int):
        net = self._need_fit()
        x = torch.from_numpy(l2_normalize(check_embeddings(emb, self._dim))).to(net.codebooks.device)
        codes, _, _, last = net.quantize(net.encoder(x), n_last)
        return codes.cpu().numpy().astype(np.int64), (None if last is None else last.cpu().numpy().astype(np.int64))

    def encode(self, emb: np.ndarray) -> np.ndarray:
        """emb [N, E] -> codes [N, L] int64."""
        return self._encode(emb, 1)[0]

    def encode_candidates(self, emb: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` best codes [N, n, L]: greedy levels 1..L-1, then the n nearest last-level codes."""
        n = max(1, min(int(n), self.level_sizes[-1]))
        codes, last = self._encode(emb, n)
        out = np.repeat(codes[:, None, :], n, axis=1)
        if last is not None:
            out[:, :, -1] = last
        return out

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [N, L] -> reconstructed embeddings [N, E] (normalised space)."""
        net = self._need_fit()
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=net.codebooks.device)
        z = sum(net.codebooks[l][c[:, l]] for l in range(c.shape[1]))
        return net.decoder(z).cpu().numpy().astype(np.float32)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        net = self._need_fit()
        cfg = asdict(self.config)
        cfg["hidden"] = list(cfg["hidden"])
        state = {"kind": KIND, "version": self.version, "config": cfg, "dedup_size": self.dedup_size,
                 "dim": self._dim}
        for name, t in net.state_dict().items():
            state[f"p.{name}"] = t.detach().cpu().numpy()
        return state

    @classmethod
    def from_state(cls, state: dict) -> "RQVAE":
        if state.get("kind") != KIND:
            raise ValueError(f"state of kind {state.get('kind')!r} is not an RQ-VAE state")
        cfg = dict(state["config"])
        cfg["hidden"] = tuple(cfg["hidden"])
        tok = cls(RQVAEConfig(**cfg))
        params = {k[2:]: torch.from_numpy(np.asarray(v)) for k, v in state.items() if k.startswith("p.")}
        k = params["codebooks"].shape[1]
        tok._dim = int(state["dim"])
        net = _Net(tok._dim, tok.config, k)
        net.load_state_dict(params)
        net.eval()
        tok.net = net.to(torch.device(tok.config.device))
        tok.dedup_size = int(state["dedup_size"])
        tok.version = codebooks_version(KIND, [p.detach().cpu().numpy() for p in net.state_dict().values()])
        if state.get("version") and state["version"] != tok.version:
            raise ValueError(f"parameters do not match their version {state['version']!r}; the state is corrupt")
        return tok

    def load_state_dict(self, state: dict) -> None:
        other = self.from_state(state)
        self.__dict__.update(other.__dict__)
