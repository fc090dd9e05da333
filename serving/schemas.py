"""The HTTP API's request and response bodies (pydantic; each carries OpenAPI examples)."""

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH_RECORDS = 1000

#: The contract's id rule (ingest.contract: no character for which Python's str.isspace() is true).
#: pydantic's regex engine has Unicode White_Space for \s, which lacks \x1c-\x1f; add them so an id
#: accepted here is never rejected by the contract (and dead-lettered) downstream.
ID_PATTERN = r"^[^\s\x1c-\x1f]+$"
UserId = Field(min_length=1, max_length=128, pattern=ID_PATTERN, description="the user to recommend for")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"user_id": "u42", "k": 5, "exclude_seen": True, "context": {"surface": "home"}}]})
    user_id: str = UserId
    k: int = Field(10, ge=1, le=1000, description="session length (items to generate)")
    exclude_seen: bool = Field(True, description="never recommend an item the user already interacted with")
    context: Optional[dict[str, Optional[str | int | float | bool]]] = Field(
        None, max_length=32, description="free-form request context (logged, not used for bucketing)")


class RecItem(BaseModel):
    item_id: str
    sid: list[int]
    score: float


class RecommendResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "4f1c0a9e2b7d4c18a5e3f0b6d9c2e71a", "model_version": "v1", "experiment": "decode-ab",
        "arm": "beam", "items": [{"item_id": "i17", "sid": [3, 0, 1], "score": -1.2}],
        "timings": {"total_ms": 12.5, "recommender_ms": 9.1, "log_ms": 1.2}}]})
    request_id: str
    items: list[RecItem]
    model_version: str
    experiment: str
    arm: str
    timings: dict[str, float]


class RecordBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[Any] = Field(..., max_length=MAX_BATCH_RECORDS,
                               description=f"up to {MAX_BATCH_RECORDS} records of the event contract")


class EventsBatch(RecordBatch):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [
        {"event_id": "e1", "user_id": "u42", "item_id": "i17", "type": "click", "ts": 1764000000000},
        {"event_id": "e2", "user_id": "u42", "item_id": "i17", "type": "watch", "ts": 1764000005000,
         "watch_ms": 5000, "request_id": "4f1c0a9e2b7d4c18a5e3f0b6d9c2e71a"}]}]})


class ItemsBatch(RecordBatch):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [
        {"item_id": "i900", "ts": 1764000000000, "op": "upsert", "title": "Night trains of Europe",
         "tags": ["travel", "rail"]}]}]})


class RecordError(BaseModel):
    index: int
    reason: str


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"accepted": 1, "rejected": 1, "errors": [{"index": 1, "reason": "invalid record: Expected `int`, "
                                                                           "got `str` - at `$.ts`"}]}]})
    accepted: int
    rejected: int
    errors: list[RecordError]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"yaml": None}]})
    yaml: Optional[str] = Field(None, max_length=1_000_000,
                                description="new experiments YAML; omitted: re-read the configured file")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model_version": "v2"}]})
    model_version: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)


class AdmissionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"max_inflight": 32, "latency_target_ms": 500}]})
    max_inflight: Optional[int] = Field(None, ge=1, le=100_000)
    latency_target_ms: Optional[float] = Field(None, gt=0, le=600_000,
                                               description="adaptive limit target; 0 or omitted keeps it as is")
    adaptive: Optional[bool] = Field(None, description="false: switch the adaptive limit off")


class RateLimitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"per_s": 5, "burst": 20}]})
    per_s: float = Field(ge=0, le=1_000_000, description="requests a second per client on /v1/recommend; 0: off")
    burst: Optional[int] = Field(None, ge=1, le=1_000_000,
                                 description="requests at once per client (default: serving.rate_limit_burst)")


class LoadModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model_version": "v3"}]})
    model_version: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN,
                               description="a version of the configured model registry (never a path)")
