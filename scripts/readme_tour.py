"""The README's "A short tour", runnable: prints every number the README quotes.

    .venv/bin/python scripts/readme_tour.py     # ~1 minute on 2 CPU cores

The code between the markers is the README's code block, verbatim.
"""
# --- tour
import torch, torch_ntk as tn

torch.manual_seed(0)
x = torch.randn(64, 2, dtype=torch.float64)
y = torch.cat([torch.sin(k * x[:, :1]) for k in (1, 2, 3)], 1)  # [64, 3] targets: 3 outputs
x_test = torch.randn(16, 2, dtype=torch.float64)

# The wrapper: any nn.Module, unchanged (forward, parameters, state_dict), plus kernels.
net = tn.NTK(tn.ntk_mlp([2, 2048, 2048, 3], "relu", dtype=torch.float64))
theta0 = net.empirical(x, mode="trace")          # [64, 64]: the mean over the 3 outputs
full = net.empirical(x[:8], mode="full")         # [8, 8, 3, 3]: Θ_kk′(x_i, x_j)
limit = net.limit(x)                             # .nngp, .ntk: [64, 64], per output
error0 = (theta0 - limit.ntk).norm() / limit.ntk.norm()        # finite width vs the limit

# Predict: what gradient descent on this kernel does, at any time t (also math.inf).
lr = tn.predict.max_learning_rate(theta0) / 2    # half the largest stable step
predict_fn = tn.predict.gradient_descent_mse(theta0, y, learning_rate=lr)
with torch.no_grad():
    f0, f0_test = net(x), net(x_test)
pred = predict_fn(100.0, f0, f0_test, net.empirical(x_test, x, mode="trace"))  # .train, .test

# Track: the NTK on a probe set after every 10th optimizer step.
tracker = net.tracker(x, y, every=10)
opt = torch.optim.SGD(net.parameters(), lr=lr)
tracker.attach(opt)
for step in range(100):
    opt.zero_grad()
    (0.5 * (net(x) - y).square().sum() / len(x)).backward()   # the cost predict assumes
    opt.step()
drift = tracker.history[-1].drift                # ‖Θ_100 − Θ_0‖/‖Θ_0‖
with torch.no_grad():
    gap = (net(x_test) - pred.test).norm() / (pred.test - f0_test).norm()
tracker.to_csv("drift.csv")

pca = tn.predict.kernel_pca(limit.ntk, 5)        # kernel principal components
residual = pca.decay(100.0, lr)                  # residual factor e^{−ηtλ_i/N} per component
# --- end of tour

if __name__ == "__main__":
    import os

    os.remove("drift.csv")
    off_diagonal = full - torch.diag_embed(full.diagonal(dim1=2, dim2=3))
    print(f"‖Θ₀ − Θ∞‖/‖Θ∞‖ (trace kernel, 3 outputs, width 2048): {error0:.3f}")
    print(f"off-diagonal share of the full kernel: {off_diagonal.norm() / full.norm():.3f}")
    print(f"drift after 100 steps: {drift:.3f}")
    print(f"test gap to the kernel prediction: {gap:.3f}")
    print("pca residual factors: " + ", ".join(f"{v:.2e}" for v in residual.tolist()))
    # "Scales": the limit of nn.Linear layers (standard parametrization) grows with the
    # hidden width; that of NTK-parametrized layers does not.
    for make in (tn.nn.linear_mlp, tn.ntk_mlp):
        means = [float(tn.NTK(make([2, w, w, 3], "relu")).limit(x.float()).ntk.diagonal().mean())
                 for w in (128, 512, 2048)]
        print(f"{make.__name__}: mean of diag Θ∞ at widths 128, 512, 2048: "
              + ", ".join(f"{m:.3g}" for m in means))
