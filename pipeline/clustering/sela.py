"""SeLa heads (Asano, Rupprecht & Vedaldi, ICLR 2020, "Self-labelling via simultaneous clustering and
representation learning"): T heads trained on Sinkhorn-equipartitioned labels, re-optimised as they learn.
Head t starts from the k-means(seed + t) + Sinkhorn labels (head 0's is the ``sinkhorn`` column's solve)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings


class SelaSettings(MethodSettings):
    heads: int = Field(5, gt=0, description="SeLa heads T (independent clusterings)")
    lam: float = Field(25.0, gt=0, description="Sinkhorn sharpness λ of the label updates (SeLa: 25)")
    tol: float = Field(
        1e-2,
        gt=0,
        description="relative cluster-mass tolerance of the label updates (hard-label balance is "
        "enforced separately; 1e-3 took 10x the iterations for the same labels)",
    )
    hidden: int = Field(0, ge=0, description="0 = linear heads, else an MLP with this hidden width")
    epochs: int = Field(20, ge=0, description="head training epochs (0: the initial labels)")
    label_updates: int = Field(5, ge=0, description="Sinkhorn label optimisations spread over the epochs")
    batch_size: int = Field(1024, gt=0, description="rows per head-training step")
    lr: float = Field(0.1, gt=0, description="SGD learning rate of the heads")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay of the heads")


class SeLa(ClusteringMethod):
    name = "sela"
    Settings = SelaSettings
    by_default = True

    def columns(self) -> list[tuple[str, str]]:  # per head t: its cluster and that cluster's probability
        return [
            (f"{n}_{t}", kind)
            for t in range(self.settings.heads)
            for n, kind in (("head", "label"), ("posterior", "score"))
        ]

    def run(self, inputs: ClusterInputs) -> MethodOutput:
        import torch

        from lakelabel.models.sela import train_sela
        from lakelabel.models.sinkhorn import sinkhorn_assign

        s, seed = self.settings, inputs.config.seed
        init = torch.stack([inputs.balanced(seed + t).labels for t in range(s.heads)], dim=1)
        sela = train_sela(
            torch.from_numpy(inputs.x),
            init,
            inputs.k,
            hidden=s.hidden,
            epochs=s.epochs,
            label_updates=s.label_updates,
            lam=s.lam,
            target=inputs.target,
            tol=s.tol,
            balance=inputs.config.sinkhorn.balance,
            batch_size=s.batch_size,
            lr=s.lr,
            weight_decay=s.weight_decay,
            seed=seed,
            log=inputs.log,
        )
        model = sela.model.eval()

        # the lake's labels: per head, the label optimisation of the trained heads over every part
        # (warm-started from the sample's last one; untrained heads: the initial k-means + Sinkhorn)
        def head_scores(t: int):
            if not s.epochs:
                return inputs.centroid_scores(seed + t)

            @torch.no_grad()
            def scores(x: np.ndarray) -> torch.Tensor:
                return torch.log_softmax(model.heads[t](torch.from_numpy(x)), dim=1)

            return scores

        scorers = [head_scores(t) for t in range(s.heads)]  # (assign carries these, not the inputs)
        balance, solves = inputs.config.sinkhorn.balance, []
        for t in range(s.heads):
            if s.epochs:
                solved = inputs.balanced_lake(
                    f"sela-{seed}-{t}",
                    scorers[t],
                    sela.lams[t],
                    tol=s.tol,
                    balance=balance,
                    init_log_scale=sela.log_scales[t],
                )
            else:  # the Sinkhorn method's own solve for seed + t (shared when it ran)
                tol = inputs.config.sinkhorn.tol
                solved = inputs.balanced_lake(
                    f"sinkhorn-{seed + t}", scorers[t], 1.0, tol=tol, balance=balance
                )
            solves.append(solved.result)

        @torch.no_grad()
        def assign(x: np.ndarray, start: int) -> dict[str, np.ndarray]:
            columns: dict[str, np.ndarray] = {}
            for t, solved in enumerate(solves):
                scores = scorers[t](x)
                labels, posterior = sinkhorn_assign(scores, solved.lam, solved.log_scale)
                if s.epochs:  # the head's own softmax probability of its label
                    posterior = scores.exp().gather(1, labels[:, None])[:, 0]
                columns[f"head_{t}"] = labels.numpy().astype(np.int32)
                columns[f"posterior_{t}"] = posterior.numpy().astype(np.float32)
            return columns

        initial = [inputs.balanced(seed + t).result for t in range(s.heads)]
        return MethodOutput(
            assign,
            {
                "initial_sinkhorn_iterations": [r.iterations for r in initial],
                "sinkhorn_iterations": [
                    r["sinkhorn_iterations"] for r in sela.history if "sinkhorn_iterations" in r
                ],
                "lake_sinkhorn_iterations": [r.iterations for r in solves],
                "history": sela.history,
            },
            {
                "heads": sela.model.state_dict(),
                "sela_log_scales": np.stack([r.log_scale.numpy() for r in solves]),
                "sela_lambdas": np.array([r.lam for r in solves], np.float32),
            },
        )
