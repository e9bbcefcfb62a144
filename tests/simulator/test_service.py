"""Service model files and fitting latency models from measurements."""

import numpy as np
import pytest

from configs import ConfigError
from simulator.service import Latency, Measurement, fit_latency, load_service_model


def test_fit_recovers_a_linear_model_and_its_jitter():
    truth = Latency(base_s=0.02, per_item_s=0.004, per_input_token_s=0.00005, jitter=0.1)
    rng = np.random.default_rng(4)
    points = []
    for _ in range(400):
        items = int(rng.integers(1, 64))
        tokens = int(items * rng.integers(20, 200))
        noise = rng.lognormal(-0.005, 0.1)
        points.append(
            Measurement(
                items=items, input_tokens=tokens, output_tokens=0, latency_s=truth.mean_s(items, tokens, 0) * noise
            )
        )
    fitted = fit_latency(points)
    assert fitted.base_s == pytest.approx(truth.base_s, rel=0.15)
    assert fitted.per_item_s == pytest.approx(truth.per_item_s, rel=0.15)
    assert fitted.per_input_token_s == pytest.approx(truth.per_input_token_s, rel=0.15)
    assert fitted.per_output_token_s == 0.0  # never varied: no coefficient of its own
    assert fitted.jitter == pytest.approx(0.1, abs=0.03)


def test_fit_weighs_small_calls_as_much_as_large_ones():
    # A profile's sweep: 12 calls at each batch size, with a noise factor on
    # each. The big calls' absolute noise must not decide the small calls' time.
    truth = Latency(base_s=0.005, per_item_s=0.006, jitter=0.15)
    rng = np.random.default_rng(0)
    points = [
        Measurement(items=n, input_tokens=0, output_tokens=0, latency_s=truth.mean_s(n, 0, 0) * rng.lognormal(0, 0.15))
        for n in (1, 2, 4, 8, 16, 32, 64)
        for _ in range(12)
    ]
    fitted = fit_latency(points)
    assert fitted.mean_s(1, 0, 0) == pytest.approx(truth.mean_s(1, 0, 0), rel=0.1)
    assert fitted.mean_s(64, 0, 0) == pytest.approx(truth.mean_s(64, 0, 0), rel=0.1)
    with pytest.raises(ValueError, match="positive"):
        fit_latency([*points, Measurement(items=1, input_tokens=0, output_tokens=0, latency_s=0.0)])


def test_fit_never_returns_negative_coefficients():
    points = [Measurement(items=n, input_tokens=0, output_tokens=0, latency_s=0.5 - 0.001 * n) for n in range(1, 50)]
    fitted = fit_latency(points)
    assert fitted.per_item_s >= 0 and fitted.base_s > 0
    with pytest.raises(ValueError, match="two measurements"):
        fit_latency(points[:1])


def test_a_service_file_loads_and_errors_name_file_line_field_and_value(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "lanes:\n"
        "  realtime: {kind: server, replicas: 2, concurrency: 4, latency: {base: 20ms, per_output_token: 12ms}}\n"
        "  batch: {kind: batch_api, turnaround_median: 20m, turnaround_sigma: 0.8}\n"
    )
    model = load_service_model(good)
    assert model.lanes["realtime"].servers == 8
    assert model.lanes["realtime"].latency.per_output_token_s == pytest.approx(0.012)
    assert model.lanes["batch"].max_turnaround_s == 86_400.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "lanes:\n  realtime:\n    kind: server\n    replicas: 0\n  batch: {kind: batch_api, max_turnaround: 48h}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_service_model(bad)
    text = "\n".join(caught.value.lines)
    assert f"{bad}:4" in text and "replicas" in text and "0" in text
    assert "max_turnaround" in text and f"{bad}:5" in text


def test_every_ready_config_ships_a_service_model_that_covers_its_lanes():
    from configs import READY_CONFIGS, load_config, ready_config_path
    from simulator.command import service_beside
    from simulator.service import check_covers, load_service_model

    for name in READY_CONFIGS:
        path = str(ready_config_path(name))
        model = load_service_model(service_beside(path))
        check_covers(model, list(load_config(path).lanes), service_beside(path))
        assert model.source  # says where its figures come from
