import random
import textwrap

import pytest

from configs import READY_CONFIGS, ConfigError, build_control_loop, load_config, parse_config, ready_config_path

GOOD = textwrap.dedent(
    """\
    server:
      listen: "127.0.0.1:8080"
      admin_listen: "127.0.0.1:9090"
    lanes:
      realtime:
        upstreams: ["http://127.0.0.1:8101"]
        timeout: 30s
      batch:
        upstreams: ["http://127.0.0.1:8102"]
        batching: {rule: hybrid, max_batch: 32, max_wait: 20ms}
    modes:
      realtime: {realtime: 1.0}
      hybrid: {realtime: 0.5, batch: 0.5}
      batch: {batch: 1.0}
    initial_mode: realtime
    policy:
      type: load
      params: {low_rps: 10, high_rps: 100}
    switching:
      steps: [0.2, 0.5, 0.8, 1.0]
    """
)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "prod.yaml")
    return caught.value.lines


def test_good_config_parses_with_units():
    config = parse_config(GOOD, "prod.yaml")
    assert config.lanes["realtime"].timeout_s == 30.0
    assert config.lanes["batch"].batching.max_wait_s == 0.02
    assert config.policy.params.high_rps == 100
    assert config.switching.steps == (0.2, 0.5, 0.8, 1.0)


def test_unknown_key_names_line_path_and_suggests():
    lines = errors_of(GOOD.replace('  listen: "127.0.0.1:8080"', '  lisen: "127.0.0.1:8080"'))
    assert lines == [
        'prod.yaml:2: server.lisen: unknown key; did you mean "listen"? known: admin_listen, admin_token_env, '
        "header_timeout, keepalive_timeout, listen, max_body_bytes, max_connections, max_header_bytes, "
        "receive_timeout, seed, shutdown_timeout"
    ]


def test_bad_duration():
    lines = errors_of(GOOD.replace("max_wait: 20ms", "max_wait: fast"))
    assert lines == [
        'prod.yaml:10: lanes.batch.batching.max_wait = "fast": expected a duration like "50ms", "2s", "5m" or "1h30m"'
    ]


def test_bare_number_duration_is_refused():
    lines = errors_of(GOOD.replace("timeout: 30s", "timeout: 30"))
    assert lines == [
        'prod.yaml:7: lanes.realtime.timeout = 30: expected a duration with a unit like "50ms", "2s" or "5m"; '
        "a bare number is ambiguous"
    ]


def test_unknown_policy_lists_known_ones():
    lines = errors_of(GOOD.replace("type: load", "type: latncy"))
    assert lines == [
        'prod.yaml:17: policy.type = "latncy": unknown policy; '
        "known: adaptive, composite, cost, fleet, latency, load, slo, static"
    ]


def test_mode_naming_a_missing_lane():
    lines = errors_of(GOOD.replace("hybrid: {realtime: 0.5, batch: 0.5}", "hybrid: {realtime: 0.5, gpu: 0.5}"))
    assert lines == ["prod.yaml:13: modes.hybrid.gpu = 0.5: no lane 'gpu'; lanes: batch, realtime"]


def test_weights_not_summing_to_one():
    lines = errors_of(GOOD.replace("hybrid: {realtime: 0.5, batch: 0.5}", "hybrid: {realtime: 0.5, batch: 0.4}"))
    assert lines == ["prod.yaml:13: modes.hybrid = {realtime: 0.5, batch: 0.4}: weights sum to 0.9; they must sum to 1"]


def test_initial_mode_must_exist():
    assert errors_of(GOOD.replace("initial_mode: realtime", "initial_mode: turbo")) == [
        'prod.yaml:15: initial_mode = "turbo": no such mode; modes: batch, hybrid, realtime'
    ]


def test_policy_params_are_validated_by_the_policy():
    lines = errors_of(GOOD.replace("{low_rps: 10, high_rps: 100}", "{low_rps: 10, hihg_rps: 100, high_mode: bulk}"))
    assert lines == [  # the unknown key and the unknown mode in one pass
        'prod.yaml:18: policy.params.hihg_rps: unknown key; did you mean "high_rps"? '
        "known: high_mode, high_rps, hold, low_mode, low_rps",
        'prod.yaml:18: policy.params.high_mode = "bulk": no such mode; modes: batch, hybrid, realtime',
    ]
    lines = errors_of(GOOD.replace("{low_rps: 10, high_rps: 100}", "{low_rps: 10, high_mode: bulk}"))
    assert lines == ['prod.yaml:18: policy.params.high_mode = "bulk": no such mode; modes: batch, hybrid, realtime']


def test_steps_error_points_at_the_element():
    lines = errors_of(GOOD.replace("[0.2, 0.5, 0.8, 1.0]", "[0.2, 0.5, 1.5, 1.0]"))
    assert lines[0] == "prod.yaml:20: switching.steps[2] = 1.5: each step must be in (0, 1]"


def test_several_errors_at_once_each_on_its_own_line():
    text = GOOD.replace("max_wait: 20ms", "max_wait: fast").replace("timeout: 30s", "timeout: soon")
    lines = errors_of(text)
    assert [line.split(":")[1] for line in lines] == ["7", "10"]


def test_duplicate_keys_and_yaml_syntax():
    assert errors_of(GOOD + "initial_mode: batch\n") == [
        "prod.yaml:21: YAML syntax: key 'initial_mode' appears twice (first on line 15)"
    ]
    assert errors_of("lanes: [\n")[0].startswith("prod.yaml:2: YAML syntax:")
    assert errors_of("- a\n- b\n") == ["prod.yaml:1: expected a mapping of sections (server, lanes, modes, ...)"]


def test_missing_required_section():
    lines = errors_of(
        "lanes:\n  realtime: {upstreams: ['http://h:1']}\nmodes: {realtime: {realtime: 1}}\ninitial_mode: realtime\n"
    )
    assert lines == ["prod.yaml:1: policy: required, missing"]


def test_admin_api_cannot_share_the_data_port():
    lines = errors_of(GOOD.replace('admin_listen: "127.0.0.1:9090"', 'admin_listen: "127.0.0.1:8080"'))
    assert lines == ['prod.yaml:3: server.admin_listen = "127.0.0.1:8080": the admin API needs its own address']


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", READY_CONFIGS)
def test_ready_configs_load_and_build_a_control_loop(name):
    config = load_config(ready_config_path(name))
    loop = build_control_loop(config, now_s=0.0, rng=random.Random(0))
    assert loop.weights == config.modes[config.initial_mode]
    assert set(loop.monitor.lanes) == set(config.lanes)
    loop.tick(1.0)


def test_objectives_are_checked_where_they_are_written():
    text = GOOD.replace(
        "modes:\n",
        "objectives:\n  pinned: {latency: 1s, percentile: 100}\n  switchable: {latency: 2s, error_budget: 0.5}\n"
        "routes:\n  - {path: /, class: interactive}\nmodes:\n",
    )
    assert errors_of(text) == [  # the field error and the cross-field one, in one pass
        "prod.yaml:12: objectives.pinned.percentile = 100: Input should be less than 100",
        'prod.yaml:15: routes[0].class = "interactive": no objective for this class; declare it under objectives '
        "(classes: jobs, pinned, switchable)",
    ]
    assert errors_of(text.replace("percentile: 100", "percentile: 99")) == [
        'prod.yaml:15: routes[0].class = "interactive": no objective for this class; declare it under objectives '
        "(classes: jobs, pinned, switchable)",
    ]
    fine = parse_config(
        text.replace("percentile: 100", "percentile: 99.9").replace("class: interactive", "class: pinned")
    )
    assert fine.objectives["pinned"].percentile == 99.9 and fine.routes[0].traffic_class == "pinned"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
        ("http://127.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("http://127.0.0.1:80x", "the port must be a number from 1 to 65535"),
        ("ftp://127.0.0.1:21", "is not an http(s) URL"),
        ("http://:8101", "is not an http(s) URL"),
        ("http://127.0.0.1:8101/v1?key=1", "a base URL has no query or fragment"),
    ],
)
def test_an_upstream_url_is_checked_for_scheme_host_and_port(url, problem):
    (line,) = errors_of(GOOD.replace('["http://127.0.0.1:8101"]', f'["{url}"]'))
    assert line.startswith("prod.yaml:6: lanes.realtime.upstreams = ") and problem in line and url in line


PROVIDER_LANE = GOOD.replace(
    "    batching: {rule: hybrid, max_batch: 32, max_wait: 20ms}",
    "    batch_api: {api: openai, max_requests: 1000, max_wait: 1m}",
)


def test_a_provider_batch_lane_takes_jobs_only_and_names_its_fallback():
    lines = errors_of(PROVIDER_LANE)  # GOOD's hybrid and batch modes weigh the batch lane
    assert lines == [
        "prod.yaml:13: modes.hybrid.batch = 0.5: lane 'batch' is a provider batch lane: it takes jobs"
        " (Prefer: respond-async, /v1/batches) only, never live requests",
        "prod.yaml:14: modes.batch.batch = 1.0: lane 'batch' is a provider batch lane: it takes jobs"
        " (Prefer: respond-async, /v1/batches) only, never live requests",
    ]
    jobs_only = PROVIDER_LANE.replace("  hybrid: {realtime: 0.5, batch: 0.5}\n  batch: {batch: 1.0}\n", "").replace(
        "type: load\n  params: {low_rps: 10, high_rps: 100}", "type: static\n  params: {mode: realtime}"
    )
    config = parse_config(jobs_only, "prod.yaml")
    assert config.lanes["batch"].batch_api.max_wait_s == 60.0
    wrong_fallback = jobs_only.replace("max_wait: 1m}", "max_wait: 1m, fallback: gpu}")
    assert errors_of(wrong_fallback) == [
        'prod.yaml:10: lanes.batch.batch_api.fallback = "gpu": the fallback must be another lane that is not a'
        " batch_api lane; lanes: batch, realtime"
    ]


def test_a_provider_batch_lane_stays_within_the_providers_limits():
    over = PROVIDER_LANE.replace("max_requests: 1000", "max_requests: 60000")
    (line,) = [line for line in errors_of(over) if "batch_api" in line]
    assert line.startswith("prod.yaml:10: lanes.batch.batch_api")
    assert "max_requests 60000 is over openai's 50,000" in line
    anthropic = over.replace("api: openai", "api: anthropic")
    assert not [line for line in errors_of(anthropic) if "max_requests" in line]  # Anthropic takes 100,000


def test_a_file_with_field_and_cross_field_errors_shows_them_all_in_one_pass():
    text = (
        GOOD.replace("    timeout: 30s", "    timeout: 30s\n    max_in_flight: -3")
        .replace("hybrid: {realtime: 0.5, batch: 0.5}", "hybrid: {realtime: 0.5, batch: 0.2}")
        .replace("low_rps: 10", "low_rsp: 10")
        .replace("initial_mode: realtime", "initial_mode: realtme")
    )
    lines = errors_of(text)
    assert len(lines) == 4, lines
    assert any("lanes.realtime.max_in_flight = -3" in line for line in lines)
    assert any("policy.params.low_rsp: unknown key" in line for line in lines)
    assert any("modes.hybrid" in line and "weights sum to 0.7" in line for line in lines)
    assert any('initial_mode = "realtme"' in line and "no such mode" in line for line in lines)


def test_a_cross_field_problem_under_a_value_that_failed_is_not_reported_twice():
    lines = errors_of(GOOD.replace("batch: {batch: 1.0}", "batch: {batch: -1.0}"))
    assert len(lines) == 1 and "modes.batch.batch = -1" in lines[0], lines  # not also "weights sum to -1"


def test_a_typo_inside_a_composites_policy_is_one_line_without_pydantics_echo():
    text = GOOD.replace(
        "policy:\n  type: load\n  params: {low_rps: 10, high_rps: 100}",
        "policy:\n  type: composite\n  params:\n    policies: [{type: load, params: {low_rsp: 3, high_rps: 6}}]",
    )
    lines = errors_of(text)
    assert len(lines) == 1 and "policy.params.policies[0].params.low_rsp: unknown key" in lines[0], lines


def test_access_grants_name_classes_and_lanes_that_exist_and_keys_by_their_hash():
    access = "access:\n  everyone: {classes: [urgnt]}\n  credentials:\n    checkout: {key_sha256: %s, lanes: [cheap]}\n"
    lines = errors_of(GOOD + access % ("ab" * 32))
    assert any("access.everyone.classes[0]" in line and "urgnt" in line for line in lines), lines
    assert any("access.credentials.checkout.lanes[0]" in line and "cheap" in line for line in lines), lines
    lines = errors_of(GOOD + access % "sk-live-123")
    assert len(lines) == 1 and "access.credentials.checkout.key_sha256" in lines[0] and "sha256sum" in lines[0]


def test_timers_and_durations_have_sane_bounds():
    lines = errors_of(GOOD.replace("steps: [0.2, 0.5, 0.8, 1.0]", "steps: [0.2, 0.5, 0.8, 1.0]\n  tick: 1ms"))
    assert len(lines) == 1 and "switching.tick" in lines[0] and "at least 10ms" in lines[0], lines
    lines = errors_of(GOOD.replace("timeout: 30s", "timeout: 3000h"))
    assert len(lines) == 1 and "lanes.realtime.timeout" in lines[0] and "at most 30 days" in lines[0], lines
    lines = errors_of(GOOD + "metrics: {window: 720h, slot: 10ms}\n")
    assert any("metrics" in line for line in lines), lines


def test_a_document_of_aliases_is_refused_before_it_is_built_and_errors_stay_short():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 9):  # 10^9 values once expanded, in a few hundred bytes
        bomb += f"{chr(97 + level)}: &{chr(97 + level)} [" + ",".join([f"*{chr(96 + level)}"] * 10) + "]\n"
    lines = errors_of(GOOD + bomb)
    assert len(lines) == 1 and "expands to" in lines[0] and "aliases" in lines[0], lines
    long_value = errors_of(GOOD.replace("initial_mode: realtime", "initial_mode: [" + "a," * 20000 + "b]"))
    assert all(len(line) < 1000 for line in long_value), [len(line) for line in long_value]


def test_a_bad_autoscale_section_is_located_by_file_line_field_and_value():
    """The capacity settings are user input like any other: each mistake is one line naming where it is."""
    autoscaled = GOOD.replace(
        "    timeout: 30s\n",
        "    timeout: 30s\n    autoscale: {min: 1, max: 4, target: load}\n",
    )
    (line,) = errors_of(autoscaled)
    assert line.startswith("prod.yaml:8: lanes.realtime.autoscale.target") and "load" in line
    (line,) = errors_of(autoscaled.replace("min: 1, max: 4, target: load", "min: 6, max: 4"))
    assert line.startswith("prod.yaml:8: lanes.realtime.autoscale") and "min (6) is over max (4)" in line
    (line,) = errors_of(
        GOOD.replace("type: load", "type: fleet").replace("params: {low_rps: 10, high_rps: 100}", "params: {margin: 2}")
    )
    assert "policy.params.margin" in line and "2" in line
