"""The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.

Written out rather than derived: ingest bodies are parsed column-wise for speed, not through
per-row models, and this document is the contract clients and the API fuzz tests rely on.
"""

from __future__ import annotations

from typing import Any

from msewatch import __version__

__all__ = ["openapi_document"]

_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
_TIME = {
    "oneOf": [{"type": "string", "description": "ISO 8601; naive = UTC"}, {"type": "number", "description": "epoch seconds"}]
}

_PREDICTION = {
    "type": "object",
    "required": ["prediction_id", "ts", "y_pred"],
    "properties": {
        "prediction_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "ts": _TIME,
        "model": {"type": "string", "maxLength": 256, "description": "default: 'default'"},
        "version": {"type": "string", "maxLength": 256, "description": "default: 'default'"},
        "y_pred": {"type": "number"},
    },
    "additionalProperties": {
        **_SCALAR,
        "description": "segment (text) or feature (number) columns; see ignored_fields in the answer",
    },
}
_LABEL = {
    "type": "object",
    "required": ["prediction_id", "y_true"],
    "properties": {
        "prediction_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "y_true": {"type": "number"},
        "label_ts": _TIME,
    },
    "additionalProperties": {**_SCALAR, "description": "ignored (reported in ignored_fields)"},
}
_SHADOW = {
    **_PREDICTION,
    "description": (
        "A candidate version's prediction for a request production also scored (shadow mode); "
        "stored apart, keyed by prediction_id and version, and never counted in the metrics."
    ),
    "additionalProperties": {**_SCALAR, "description": "ignored (reported in ignored_fields)"},
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_INGEST_ANSWER = {
    "type": "object",
    "required": ["accepted", "duplicates", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "error"],
                "properties": {"index": {"type": "integer", "minimum": 0}, "error": {"type": "string"}},
            },
        },
        "ignored_fields": {"type": "array", "items": {"type": "string"}},
    },
}


def _error_response(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ingest(kind: str, schema: str, noun: str | None = None) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {
        "post": {
            "summary": f"Store {kind}",
            "description": (
                f"One {noun or kind[:-1]} object, an array of them, or NDJSON (one object per line). "
                "Answered after the accepted rows are committed to disk. Re-sent rows are counted "
                "as duplicates; rows that fail validation are listed with their index and reason, "
                "and never block the others."
            ),
            "security": [{"bearer": ["ingest"]}, {}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"oneOf": [ref, {"type": "array", "items": ref}]}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "200": {
                    "description": "committed",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestAnswer"}}},
                },
                "400": _error_response("the body is not usable as a whole"),
                "401": _error_response("missing or invalid token"),
                "403": _error_response("the token lacks the ingest scope"),
                "413": _error_response("body or record count over the limit"),
                "429": _error_response("ingest queue full; retry after Retry-After seconds"),
                "503": _error_response("not ready, shutting down, or the store failed; retry"),
            },
        }
    }


def _object_answer(key: str, text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {
            "type": "object", "required": [key],
            "properties": {key: {"type": "array", "items": {"type": "object"}}},
        }}},
    }


def _read_errors() -> dict[str, Any]:
    return {
        "401": _error_response("missing or invalid token"),
        "403": _error_response("the token lacks the read scope"),
        "503": _error_response("not ready"),
    }


def _admin_errors() -> dict[str, Any]:
    return {
        "401": _error_response("missing or invalid token"),
        "403": _error_response("the token lacks the admin scope"),
        "503": _error_response("not ready"),
    }


_SILENCE = {
    "type": "object",
    "required": ["matchers"],
    "additionalProperties": False,
    "properties": {
        "matchers": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"},
                     "description": "alert labels that must all match, e.g. {\"model\": \"price\"}"},
        "starts": {"type": "string", "description": "ISO 8601 or epoch seconds; default now"},
        "ends": {"type": "string", "description": "ISO 8601 or epoch seconds (or give duration)"},
        "duration": {"type": "string", "description": "2h, 1d… from starts (or give ends)"},
        "comment": {"type": "string", "maxLength": 1024},
    },
}


_CANARY_ANSWER = {
    "description": "the verdict",
    "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["verdict", "p_value", "mse_ratio", "ci", "n_canary", "n_control", "label_coverage", "reason"],
        "properties": {
            "verdict": {"enum": ["pass", "fail", "continue"]},
            "p_value": {"type": ["number", "null"]},
            "mse_ratio": {"type": ["number", "null"]},
            "ci": {"type": ["array", "null"], "items": {"type": "number"}},
            "n_canary": {"type": "integer"},
            "n_control": {"type": "integer"},
            "label_coverage": {"type": ["number", "null"]},
            "reason": {"type": "string"},
        },
    }}},
}


def _monitor_paths() -> dict[str, Any]:
    return {
        "/v1/alerts": {
            "get": {
                "summary": "Alerts as the last evaluation left them, with runbooks and what mutes them",
                "security": [{"bearer": ["read"]}, {}],
                "parameters": [_query("state", "active (default), all, pending, firing or resolved")],
                "responses": {"200": _object_answer("alerts", "alerts"), "400": _error_response("a bad parameter"),
                              **_read_errors()},
            }
        },
        "/v1/slo": {
            "get": {
                "summary": "Every SLO: budget remaining, burn rates over 5m…3d, firing tiers",
                "security": [{"bearer": ["read"]}, {}],
                "responses": {"200": _object_answer("slos", "SLO statuses"), **_read_errors()},
            }
        },
        "/v1/canary": {
            "get": {
                "summary": "Judge a canary version against its control by MSE (mixture SPRT: valid however often read)",
                "security": [{"bearer": ["read"]}, {}],
                "parameters": [
                    {**_query("model", "the model"), "required": True},
                    {**_query("canary", "the version being judged"), "required": True},
                    {**_query("control", "the version it replaces"), "required": True},
                    _query("mode", "split (default) or shadow"),
                    _query("since", "judge predictions from here (default: the canary's first)"),
                    _query("until", "judge predictions before this time"),
                ],
                "responses": {"200": _CANARY_ANSWER, "400": _error_response("a bad parameter"), **_read_errors()},
            }
        },
        "/v1/flagger": {
            "post": {
                "summary": "Flagger webhook: 200 unless the canary fails (412); metadata gives model, canary, control",
                "security": [{"bearer": ["read"]}, {}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["metadata"],
                    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                   "phase": {"type": "string"},
                                   "metadata": {"type": "object", "required": ["model", "canary", "control"],
                                                "properties": {k: {"type": "string", "minLength": 1} for k in
                                                               ("model", "canary", "control", "mode", "require", "token")}}},
                }}}},
                "responses": {"200": _CANARY_ANSWER, "412": _CANARY_ANSWER,
                              "400": _error_response("a bad body"), "413": _error_response("body over the limit"),
                              **_read_errors()},
            }
        },
        "/v1/silences": {
            "get": {
                "summary": "Silences added through the API or the CLI",
                "security": [{"bearer": ["read"]}, {}],
                "responses": {"200": _object_answer("silences", "silences"), **_read_errors()},
            },
            "post": {
                "summary": "Add a silence (admin scope)",
                "security": [{"bearer": ["admin"]}, {}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _SILENCE}}},
                "responses": {
                    "201": {"description": "created", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}}}},
                    "400": _error_response("a bad silence"),
                    "413": _error_response("body over the limit"),
                    **_admin_errors(),
                },
            },
        },
        "/v1/silences/{silence_id}": {
            "delete": {
                "summary": "Expire a silence now (admin scope)",
                "security": [{"bearer": ["admin"]}, {}],
                "parameters": [{"name": "silence_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "expired", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "404": _error_response("no such silence"),
                    **_admin_errors(),
                },
            }
        },
    }


def _query(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "msewatch",
            "version": __version__,
            "description": "Ingest predictions and labels; read MSE and friends by window, cohort and version.",
        },
        "paths": {
            "/v1/predictions": _ingest("predictions", "Prediction"),
            "/v1/labels": _ingest("labels", "Label"),
            "/v1/shadow": _ingest("shadow predictions", "ShadowPrediction", "shadow prediction"),
            "/v1/metrics": {
                "get": {
                    "summary": "Evaluate the store (the JSON of `msewatch eval --format json`)",
                    "security": [{"bearer": ["read"]}, {}],
                    "parameters": [
                        _query("model", "only this model"),
                        _query("version", "only this version"),
                        _query("window", "tumbling windows by prediction time: 15m, 1h, 1d…"),
                        _query("rolling", "sliding windows of this size"),
                        _query("step", "step of the sliding windows"),
                        _query("by", "comma-separated columns to group by"),
                        _query("since", "predictions at or after this time"),
                        _query("until", "predictions before this time"),
                        _query("huber_delta", "δ of the Huber loss (default 1)"),
                    ],
                    "responses": {
                        "200": {
                            "description": "evaluation rows",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["rows"],
                                        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
                                    }
                                }
                            },
                        },
                        "400": _error_response("a bad parameter"),
                        "401": _error_response("missing or invalid token"),
                        "403": _error_response("the token lacks the read scope"),
                    },
                }
            },
            **_monitor_paths(),
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "security": [{"bearer": ["read"]}, {}],
                    "responses": {
                        "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "401": _error_response("missing or invalid token"),
                        "403": _error_response("the token lacks the read scope"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is up",
                    "responses": {"200": {"description": "up", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The store is open and the commit thread runs",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "503": _error_response("not ready"),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Prediction": _PREDICTION,
                "Label": _LABEL,
                "ShadowPrediction": _SHADOW,
                "IngestAnswer": _INGEST_ANSWER,
                "Error": _ERROR,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
