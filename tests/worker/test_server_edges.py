"""The serving endpoint's edges (issue 29), on a real `undertow serve` with the embedded broker: the server
refuses with 422 exactly what the monitor would dead-letter (the hostile corpus through both edges),
NaN and infinity are a 422 naming the field that keeps the connection and is counted, error bodies echo
at most a short prefix of the input, only JSON is taken (415), a bearer token guards the POST routes
when set (401), and a model that predicts NaN or infinity gets a 500 naming the rows, counted, with no
event emitted."""

from __future__ import annotations

import json
import time
import uuid

import joblib
import pytest
from sqlalchemy import text

from tests.conftest import Env, wait_for
from tests.worker.test_hostile_input import CORPUS
from tests.worker.test_server import Server, _row
from tests.worker.test_trainer import _train_v1
from undertow.errors import InvalidEvent
from undertow.models import registry, training
from undertow.models.label_kinds import LabelKind
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.events import DEFAULT_MAX_EVENT_BYTES, parse_label, parse_prediction

JSON = {"content-type": "application/json"}
TOKEN = "s3cret-token-for-tests"
EMITTED = "undertow_server_events_emitted_total"


@pytest.fixture(scope="module")
def world(broker, tmp_path_factory):
    """One registry, topics and database for the module's servers (they change nothing in it)."""
    env = Env(broker, f"sqlite:///{tmp_path_factory.mktemp('edges') / 'undertow.db'}")
    _train_v1(env)
    yield env
    env.close()


@pytest.fixture(scope="module")
def server(world):
    running = Server(world)
    yield running
    running.stop()


def _port(response) -> int:
    """The client's local port: the same one on two answers means the same TCP connection."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def _good(server, path: str = "/predict"):
    if path == "/predict":
        return server.client.post("/predict", json={"features": _row()})
    return server.client.post("/labels", json={"labels": [{"event_id": uuid.uuid4().hex, "label": 1.5}]})


def _settled(server) -> float:
    """Events acknowledged once every answered row's event is: the answered rows."""
    answered = server.metric("undertow_server_predictions_total")
    wait_for(lambda: server.metric(EMITTED, kind="prediction") >= answered, 20, "every answered row's event")
    return answered


@pytest.mark.parametrize(
    "path, body, loc",
    [
        ("/predict", {"features": {**_row(), "x0": float("nan")}}, ["features", "x0"]),
        ("/predict", {"instances": [_row(0), {**_row(1), "x1": float("inf")}]}, ["instances", 1, "x1"]),
        ("/predict", {"features": {**_row(), "x2": float("-inf")}}, ["features", "x2"]),
        ("/predict", {"features": {**_row(), "region": float("nan")}}, ["features", "region"]),
        (
            "/labels",
            {"labels": [{"event_id": "a", "label": 1.0}, {"event_id": "b", "label": float("nan")}]},
            ["labels", 1, "label"],
        ),
        ("/labels", {"labels": [{"event_id": "a", "label": float("-inf")}]}, ["labels", 0, "label"]),
    ],
)
def test_nan_and_infinity_are_a_422_naming_the_field_counted_on_a_connection_that_stays_open(server, path, body, loc):
    before = server.metric("undertow_server_requests_total", endpoint=path, status="422")
    first = _good(server, path)
    raw = json.dumps(body).encode()  # NaN, Infinity, -Infinity: the literals many JSON encoders write
    assert b"NaN" in raw or b"Infinity" in raw
    refused = server.client.post(path, content=raw, headers=JSON)
    assert refused.status_code == 422, refused.text
    assert loc in [error["loc"] for error in refused.json()["detail"]], refused.text
    after = _good(server, path)
    assert first.status_code == after.status_code and after.status_code in (200, 202)
    assert _port(first) == _port(refused) == _port(after)  # keep-alive: one connection for the three
    assert server.metric("undertow_server_requests_total", endpoint=path, status="422") == before + 1


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"features": {**_row(), "x0": "y" * 500_000}}, ["features", "x0"]),  # a string for a number
        ({"features": {**_row(), "region": {"deep": ["z" * 500_000]}}}, ["features", "region"]),
        ('{"features": {"x0": ' + "9" * 4000 + "}}", ["features", "x0"]),  # repr() of it is 4,000 characters
        ('{"features": {"x0": ' + "9" * 5000 + "}}", []),  # past the 4,300-digit limit: "number out of range"
        ('{"features": "' + "w" * 500_000, []),  # not JSON at all
    ],
)
def test_error_bodies_echo_at_most_a_short_prefix_of_the_input(server, body, loc):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = server.client.post("/predict", content=raw, headers=JSON)
    assert response.status_code == 422, response.text[:2000]
    assert len(response.content) < 2000  # a 500 KB input once came back as 700 KB
    assert loc in [error["loc"] for error in response.json()["detail"]], response.text
    assert all(len(repr(error.get("input"))) < 100 for error in response.json()["detail"])


def test_a_batch_of_bad_rows_lists_at_most_twenty_errors(server):
    rows = [{**_row(i % 50), "x0": "not a number"} for i in range(1000)]
    response = server.client.post("/predict", json={"instances": rows})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 21 and detail[-1] == {"type": "too_many_errors", "loc": [], "msg": "and 980 more"}
    assert detail[0]["loc"] == ["instances", 0, "x0"]


@pytest.mark.parametrize(
    "region, says",
    [
        ("x" * 300_000, "max_event_bytes"),  # a category the monitor dead-letters for the event's size
        (int("9" * 400), "too large"),  # an integer category no float can hold
    ],
)
def test_a_row_the_monitor_would_dead_letter_is_a_422_naming_it_and_no_row_of_the_request_is_emitted(
    server, world, region, says
):
    rows = [_row(i) for i in range(5)]
    rows[3] = {**rows[3], "region": region}
    response = server.client.post("/predict", content=json.dumps({"instances": rows}).encode(), headers=JSON)
    assert response.status_code == 422, response.text[:2000]
    detail = response.json()["detail"]
    assert [error["loc"] for error in detail] == [["instances", 3, "region"]]
    assert says in detail[0]["msg"] and len(response.content) < 2000

    assert _good(server).status_code == 200  # after the refused rows, on the same queue
    answered = _settled(server)
    # The emitter sends in order, all on one partition: events of the refused rows would be acknowledged
    # before this one's, and counted beyond the rows answered.
    assert server.metric(EMITTED, kind="prediction") == answered
    records = world.read_all(world.topics.predictions, int(answered))
    assert len(records) == answered
    assert all(len(r.value) < 10_000 for r in records)
    assert not any(isinstance(json.loads(r.value)["features"]["region"], int) for r in records)


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
        ("application/json; charset=utf-8", None),
        ("Application/JSON", None),
        ("application/vnd.undertow+json", None),
    ],
)
@pytest.mark.parametrize("path", ["/predict", "/labels"])
def test_only_json_bodies_are_taken(server, path, content_type, status):
    body = {"features": _row()} if path == "/predict" else {"labels": [{"event_id": "ct", "label": 2.0}]}
    before = server.metric("undertow_server_requests_total", endpoint=path, status="415")
    response = server.client.post(
        path, content=json.dumps(body).encode(), headers={} if content_type is None else {"content-type": content_type}
    )
    expected = status or (200 if path == "/predict" else 202)
    assert response.status_code == expected, response.text
    if expected == 415:
        assert "application/json" in response.json()["detail"]
    assert server.metric("undertow_server_requests_total", endpoint=path, status="415") == before + (expected == 415)


def test_with_a_token_set_the_post_routes_need_it_and_health_and_metrics_stay_open(world):
    server = Server(world, extra_env={"UNDERTOW_SERVER_TOKEN": TOKEN})
    try:
        answered = server.metric("undertow_server_predictions_total")
        body = json.dumps({"features": _row()}).encode()
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": f"Basic {TOKEN}"},
            {"authorization": f"Bearer {TOKEN}x"},
            {"authorization": "Bearer"},
        ):
            refused = server.client.post("/predict", content=body, headers={**JSON, **headers})
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers["www-authenticate"].startswith("Bearer")
        # The token is checked first: a wrong content type without a token is a 401, not a 415.
        assert server.client.post("/labels", content=b"{}", headers={"content-type": "text/plain"}).status_code == 401
        assert server.metric("undertow_server_requests_total", endpoint="/predict", status="401") == 5
        assert server.metric("undertow_server_requests_total", endpoint="/labels", status="401") == 1
        assert server.metric("undertow_server_predictions_total") == answered  # nothing predicted, nothing emitted

        for scheme in ("Bearer", "bearer"):
            auth = {"authorization": f"{scheme} {TOKEN}"}
            assert server.client.post("/predict", content=body, headers={**JSON, **auth}).status_code == 200
            assert (
                server.client.post(
                    "/labels", json={"labels": [{"event_id": "t", "label": 1}]}, headers=auth
                ).status_code
                == 202
            )
        for route in ("/health/live", "/health/ready", "/metrics"):
            assert server.client.get(route).status_code == 200
    finally:
        server.stop()


def _nonfinite_model(task: str, schema: dict):
    """A real scikit-learn pipeline (on x0 alone) that answers NaN or infinity for some rows only, as a fit
    gone wrong does. Regression: a tree whose leaf for x0 < -2 holds NaN and for x0 > 2 infinity.
    Classification: a logistic regression whose weight diverged to infinity, so x0 = 0 gives 0 * inf =
    NaN probabilities (any other x0 gives 0 or 1)."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.tree import DecisionTreeRegressor

    frame = training.to_frame([{**_row(), "x0": x} for x in (-3.0, -1.0, 1.0, 3.0)], schema)
    x0 = ColumnTransformer([("x0", "passthrough", ["x0"])])
    if task == "regression":
        tree = DecisionTreeRegressor(max_depth=2)
        pipeline = make_pipeline(x0, tree).fit(frame, [0.0, 1.0, 2.0, 3.0])
        nan_leaf, inf_leaf = tree.apply(np.array([[-10.0], [10.0]]))
        tree.tree_.value[nan_leaf], tree.tree_.value[inf_leaf] = np.nan, np.inf  # the array is the tree's own
        return pipeline
    model = LogisticRegression()
    pipeline = make_pipeline(x0, model).fit(frame, ["low", "low", "high", "high"])
    model.coef_[:] = np.inf
    model.intercept_[:] = 0.0
    return pipeline


# Rows 1 and 3 of the request: x0 values the model answers NaN or infinity for (its rows), or not.
@pytest.mark.parametrize(
    "task, x0s, bad_rows",
    [
        ("regression", (10.0, -10.0), [1, 3]),  # infinity, NaN
        ("classification", (10.0, 0.0), [3]),  # finite scores (0 and 1), NaN scores
    ],
)
def test_a_model_that_predicts_nan_or_infinity_gets_a_500_naming_the_rows_counted_and_no_event(
    env, task, x0s, bad_rows
):
    _train_v1(env)
    with env.engine.begin() as conn:
        schema = json.loads(conn.execute(text("SELECT feature_schema FROM model_versions")).scalar())
        schema = {name: kind for name, kind in schema.items() if not name.startswith("__")}
        path = env.artifacts_dir / f"nonfinite-{task}.joblib"
        joblib.dump(_nonfinite_model(task, schema), path)
        conn.execute(
            text("UPDATE model_versions SET artifact_path = :p, artifact_sha256 = :s, task = :t"),
            {"p": str(path), "s": registry.sha256_file(path), "t": task},
        )
    server = Server(env)
    try:
        rows = [_row(), {**_row(), "x0": x0s[0]}, _row(), {**_row(), "x0": x0s[1]}]
        answer = server.client.post("/predict", json={"instances": rows})
        assert answer.status_code == 500, answer.text
        says = answer.json()["detail"]
        assert f"rows {', '.join(map(str, bad_rows))})" in says and "no event" in says, says
        assert server.metric("undertow_server_nonfinite_predictions_total") == len(bad_rows)
        assert server.metric("undertow_server_requests_total", endpoint="/predict", status="500") == 1

        good = server.client.post("/predict", json={"features": _row()})  # the connection and server carry on
        assert good.status_code == 200 and _port(good) == _port(answer)
        wait_for(lambda: server.metric(EMITTED, kind="prediction") >= 1, 20, "the good row's event")
        records = env.read_all(env.topics.predictions, 1)
        assert [json.loads(r.value)["event_id"] for r in records] == [good.json()["predictions"][0]["event_id"]]
        assert server.metric(EMITTED, kind="prediction") == 1
        assert b"NaN" not in records[0].value and b"Infinity" not in records[0].value
    finally:
        server.stop()
    assert "predicted NaN or infinity" in server.log()


def test_a_model_that_raises_on_a_row_gets_a_one_line_500_counted_and_no_event(env):
    """A pipeline without an imputer, sent a null: the model's ValueError is a JSON 500 naming it, not a
    traceback answer."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    _train_v1(env)
    with env.engine.begin() as conn:
        schema = json.loads(conn.execute(text("SELECT feature_schema FROM model_versions")).scalar())
        schema = {name: kind for name, kind in schema.items() if not name.startswith("__")}
        frame = training.to_frame([{**_row(), "x0": x} for x in (-3.0, -1.0, 1.0, 3.0)], schema)
        path = env.artifacts_dir / "no-imputer.joblib"
        joblib.dump(
            make_pipeline(ColumnTransformer([("x0", "passthrough", ["x0"])]), LinearRegression()).fit(
                frame, [0.0, 1.0, 2.0, 3.0]
            ),
            path,
        )
        conn.execute(
            text("UPDATE model_versions SET artifact_path = :p, artifact_sha256 = :s"),
            {"p": str(path), "s": registry.sha256_file(path)},
        )
    server = Server(env)
    try:
        answer = server.client.post("/predict", json={"features": {**_row(), "x0": None}})
        assert answer.status_code == 500, answer.text
        says = answer.json()["detail"]
        assert "could not predict this request (ValueError: " in says and "no event" in says, says
        assert "\n" not in says
        assert server.metric("undertow_server_model_errors_total") == 1
        assert server.metric("undertow_server_requests_total", endpoint="/predict", status="500") == 1
        good = server.client.post("/predict", json={"features": _row()})
        assert good.status_code == 200 and _port(good) == _port(answer)
        wait_for(lambda: server.metric(EMITTED, kind="prediction") >= 1, 20, "the good row's event")
        assert server.metric(EMITTED, kind="prediction") == 1
    finally:
        server.stop()
    assert "Traceback" not in server.log()


# Values the corpus does not hold, through both edges: refused by both, or accepted by both.
EXTRA = [
    ("predict", {"region": "9" * 400}),  # a 400-digit integer category
    ("predict", {"x0": "NaN"}),
    ("predict", {"x1": "Infinity"}),
    ("predict", {"x2": "-Infinity"}),
    ("predict", {"region": "Infinity"}),
    ("labels", {"label": "NaN"}),
    ("labels", {"label": "-Infinity"}),
    ("labels", {"label": "9" * 400}),
    ("labels", {"event_id": json.dumps("e" * 201)}),
    ("predict", {}),
    ("predict", {"region": json.dumps("y" * 1000)}),
    ("predict", {"region": "7"}),
    ("predict", {"x0": "null", "region": "null"}),
    ("predict", {"x0": "1e308"}),
    ("labels", {}),
    ("labels", {"label": json.dumps("class-a")}),
    ("labels", {"label": "3"}),
]


def _edge_request(kind: str, fields: dict, row: dict, version: str, n: int) -> tuple[str, bytes, bytes]:
    """(path, request body, the record the server would emit for it): the hostile values are written as
    raw JSON into both, so both parsers see the same text (a lone-surrogate escape, a 5,000-deep array)."""
    ts = cloudevents.rfc3339(time.time())
    if kind == "predict":
        values = {name: json.dumps(value) for name, value in row.items()} | fields
        features = "{" + ", ".join(f"{json.dumps(name)}: {raw}" for name, raw in values.items()) + "}"
        event = (
            f'{{"event_id": "{uuid.uuid4().hex}", "model_id": "housing", "model_version": "{version}", '
            f'"ts": "{ts}", "features": {features}, "prediction": 1.0}}'
        )
        return "/predict", f'{{"features": {features}}}'.encode(), event.encode()
    values = {"event_id": json.dumps(f"edge-{n}"), "label": "1.0"} | fields
    label = f'"event_id": {values["event_id"]}, "label": {values["label"]}'
    event = f'{{"event_id": {values["event_id"]}, "model_id": "housing", "ts": "{ts}", "label": {values["label"]}}}'
    return "/labels", f'{{"labels": [{{{label}}}]}}'.encode(), event.encode()


def _dead_lettered(path: str, record: bytes, kind: LabelKind | None = None) -> str | None:
    """The monitor's verdict on a record, by the functions that dead-letter it (None: accepted): its parser,
    and for a label the check against its version's ``kind`` (the schema stage's)."""
    parse = parse_prediction if path == "/predict" else parse_label
    try:
        event = parse(record, DEFAULT_MAX_EVENT_BYTES)
    except InvalidEvent as exc:
        return str(exc)
    if kind is not None and path == "/labels" and not kind.fits(event.label):
        return kind.describe(event.model_id, event.label)
    return None


def _label_kind(world, version: str) -> LabelKind | None:
    with world.engine.connect() as conn:
        from sqlalchemy.orm import Session

        row = registry.find_version(Session(bind=conn), "housing", version)
    return None if row is None else LabelKind.of(row)


def test_the_hostile_corpus_through_both_edges_server_4xx_iff_monitor_dead_letter(server, world):
    # Records only a raw Kafka producer can write (a ts, an event id, a prediction the server sets itself)
    # have a reason instead of a request in CORPUS: nothing to send to the server for them.
    corpus = [edge for *_, edge in CORPUS if not isinstance(edge, str)]
    assert len(corpus) >= 9
    version = server.client.get("/health/ready").json()["model_version"]
    label_kind = _label_kind(world, version)
    assert label_kind is not None and label_kind.kind == "number"  # a regression: a text label is refused on both
    verdicts, accepted = [], []
    for n, (kind, fields) in enumerate(corpus + EXTRA):
        path, body, record = _edge_request(kind, fields, _row(n), version, n)
        response = server.client.post(path, content=body, headers=JSON)
        assert response.status_code in (200, 202, 422), (fields, response.status_code, response.text[:500])
        assert len(response.content) < 4000
        dead = _dead_lettered(path, record, label_kind)
        verdicts.append((kind, str(fields)[:60], response.status_code == 422, dead is not None, dead))
        if response.status_code != 422:
            accepted.append((path, response.json()))
    assert [v for v in verdicts if v[2] != v[3]] == []  # server refuses <=> the monitor dead-letters
    assert all(v[3] for v in verdicts[: len(corpus)])  # every corpus record is dead-lettered, as sent here too
    assert len(accepted) == 7  # EXTRA's last eight but the text label ("class-a" for a regression)

    # What the server did emit for the accepted ones, the monitor takes.
    _settled(server)
    ids = {p["event_id"] for path, answer in accepted if path == "/predict" for p in answer["predictions"]}
    emitted = [
        r.value
        for r in world.read_all(world.topics.predictions, int(server.metric(EMITTED, kind="prediction")))
        if json.loads(r.value)["event_id"] in ids
    ]
    assert len(emitted) == len(ids) == 5

    def edge_labels() -> list[bytes]:  # every label record there is (read for a second), of this test
        return [
            r.value
            for r in world.read_all(world.topics.labels, 10**9, timeout=1.0)
            if json.loads(r.value)["event_id"].startswith("edge-")
        ]

    labels = wait_for(
        lambda: (lambda found: found if len(found) >= 2 else None)(edge_labels()), 30, "the accepted labels' events"
    )
    assert len(labels) == 2
    assert [_dead_lettered("/predict", v) for v in emitted] == [None] * 5
    assert [_dead_lettered("/labels", v, label_kind) for v in labels] == [None] * 2


def test_a_label_that_cannot_be_the_served_versions_is_a_422_naming_it_and_no_label_is_emitted(server, world):
    """A regression's label sent as text: the monitor would dead-letter it (``models.label_kinds``), so the
    endpoint refuses the request, naming the label, and emits none of its labels."""
    version = server.client.get("/health/ready").json()["model_version"]
    refused = server.client.post(
        "/labels", json={"labels": [{"event_id": "kind-ok", "label": 2.5}, {"event_id": "kind-bad", "label": "high"}]}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [
        {
            "type": "label_kind",
            "loc": ["labels", 1, "label"],
            "msg": f"label 'high' of model 'housing' is not a number: version {version} is a regression",
            "input": "high",
        }
    ]
    good = uuid.uuid4().hex
    assert server.client.post("/labels", json={"labels": [{"event_id": good, "label": 2.5}]}).status_code == 202

    # One partition, sent in order: once the later label is there, a label of the refused request would be too.
    def label_ids() -> set[str]:
        return {json.loads(r.value)["event_id"] for r in world.read_all(world.topics.labels, 10**9, timeout=1.0)}

    found = wait_for(lambda: (lambda ids: ids if good in ids else None)(label_ids()), 30, "the accepted label's event")
    assert not found & {"kind-ok", "kind-bad"}
