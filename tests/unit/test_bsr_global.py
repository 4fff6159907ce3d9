"""Global-scope BSR across 2 real gloo ranks: after the data-parallel gradient average, the gradient
equals that of one process computing BT + lambda * mean(all rewards)^2 on the full batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_ray.rm import losses as L

LAMBDA = 0.3


def _data():
    g = torch.Generator().manual_seed(0)
    x_chosen = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x_rejected = torch.randn(8, 5, generator=g, dtype=torch.float64) + 0.7
    return x_chosen, x_rejected


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(5, 1, dtype=torch.float64)


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    xc, xr = _data()
    model = _model()
    c = model(xc[rank::world]).squeeze(-1)
    r = model(xr[rank::world]).squeeze(-1)
    loss = L.bt_loss(c, r) + LAMBDA * L.bsr_global_penalty(torch.cat([c, r]))
    loss.backward()
    for p in model.parameters():  # what DDP / DeepSpeed do: average gradients over ranks
        dist.all_reduce(p.grad)
        p.grad /= world
    torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"grad{rank}.pt"))
    torch.save(loss.detach(), os.path.join(out_dir, f"loss{rank}.pt"))
    dist.destroy_process_group()


def test_global_bsr_gradients_equal_full_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn", join=True)

    xc, xr = _data()
    model = _model()
    c, r = model(xc).squeeze(-1), model(xr).squeeze(-1)
    full = L.bt_loss(c, r) + LAMBDA * L.bsr_penalty(c, r)
    full.backward()
    expected = [p.grad for p in model.parameters()]

    for rank in range(2):
        got = torch.load(tmp_path / f"grad{rank}.pt")
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    # the logged loss (the mean of the ranks' values) holds the BSR term once, as the full batch's does
    logged = sum(torch.load(tmp_path / f"loss{rank}.pt") for rank in range(2)) / 2
    assert LAMBDA * L.bsr_penalty(c, r).item() > 1e-3  # the term is large enough to be seen twice
    torch.testing.assert_close(logged, full.detach(), rtol=1e-10, atol=1e-12)

    # and the local scope differs: it regularises each rank's own mean
    model = _model()
    local = sum(
        L.bt_loss(model(xc[k::2]).squeeze(-1), model(xr[k::2]).squeeze(-1))
        + LAMBDA * L.bsr_penalty(model(xc[k::2]).squeeze(-1), model(xr[k::2]).squeeze(-1))
        for k in range(2)
    ) / 2
    local.backward()
    assert not torch.allclose(model.weight.grad, expected[0])
