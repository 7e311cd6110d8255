"""One ``Settings`` class for every process, read from ``STREAMREC_*`` environment variables.

``streamrec services start`` writes the addresses of the services it started to
``.streamrec/services.env``; that file is read as a fallback, so a worker or an API
started from the same folder finds them. Real environment variables always win.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path(".streamrec")
SERVICES_ENV_FILE = STATE_DIR / "services.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", env_file=SERVICES_ENV_FILE, extra="ignore"
    )

    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = Field(default="redis://localhost:6379/0",
                           description="redis+cluster://host:port (any node) for a Redis Cluster")

    topic: str = "events"
    group_id: str = "streamrec-worker"
    topic_partitions: int = Field(default=3, ge=1)

    model: str = Field(
        default="blend",
        description="the model the worker serves; blend is the best on every backtest, cooc ingests about 2.7 "
        "times as many events per CPU-second (see the README)",
    )
    model_params: dict[str, Any] = Field(
        default={}, description='hyperparameters of the model as JSON, e.g. {"models": {"cooc": {}, '
        '"embeddings": {}}} for a blend of two parts; {} (the default): the model\'s own defaults',
    )
    top_k: int = Field(default=50, ge=1, le=1000, description="unseen items in each stored list")
    seen_types: list[str] = Field(
        default=["view", "click", "add_to_cart", "purchase"],
        description="event types that make an item 'seen' for the user (GET ?exclude_seen=true, the default, "
        "leaves those out); drop 'purchase' where customers buy the same things again",
    )
    user_list_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    redis_prefix: str = "streamrec"

    poll_timeout_ms: int = Field(default=200, ge=1)
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="a crashed worker's partitions move after this")
    worker_instance_id: str | None = Field(
        default=None, description="static group membership (KIP-345): a restarted worker keeps its partitions; "
        "unset: the host name (the host name and process id for a second worker on one host)",
    )
    max_poll_records: int = Field(default=2000, ge=1)
    max_event_bytes: int = Field(default=64 * 1024, ge=1)
    popular_refresh_s: float = Field(default=1.0, ge=0)
    checkpoint_every_events: int = Field(default=20_000, ge=1)
    checkpoint_interval_s: float = Field(default=10.0, gt=0)
    checkpoint_store: Literal["file", "kafka"] = Field(
        default="file", description="where checkpoints live: file (STATE_DIR, shared by the workers of a group) or "
        "kafka (the compacted topic <topic>.checkpoints: workers on many machines share nothing but Kafka and Redis)",
    )
    torch_threads: int = Field(
        default=1, ge=1, description="torch threads in the worker: its steps are small, and on a busy host more "
        "threads wait for each other (seen: multi-second stalls on 2 cores)",
    )
    torch_device: str = Field(
        default="cpu", description="where the worker's exact scoring (matrix product and top-k) runs: cpu, or "
        "cuda where a GPU is present",
    )
    candidate_index_min_items: int | None = Field(
        default=500_000, ge=1, description="from this many items on, the embeddings' batch ranking scores the "
        "longest 5% of item vectors exactly and takes the other candidates from an approximate index (faiss "
        "inverted file, following item updates), then scores the candidates exactly (recall@100 against scoring "
        "every item on 1M items: see the README); unset: every item is scored. Applies on the CPU only: with "
        "torch_device=cuda every item is scored exactly",
    )
    impressions_window: int = Field(default=100_000, ge=1, description="recent impressions kept for attribution")
    online_eval_k: int = Field(
        default=10, ge=0, le=1000, description="judge each served event against the user's last list (HR@k); 0: off"
    )
    dedupe_window: int = Field(default=100_000, ge=0, description="event ids remembered per partition")
    user_idle_expiry_s: float | None = Field(
        default=30 * 24 * 3600.0, gt=0, description="forget users idle this long (event time); None: never"
    )
    item_idle_expiry_s: float | None = Field(
        default=30 * 24 * 3600.0, gt=0,
        description="forget items idle this long (event time; they start afresh if they return); None: never",
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_key: SecretStr | None = Field(
        default=None, description="required by write endpoints (X-API-Key); unset: writes are refused"
    )
    read_api_key: SecretStr | None = Field(
        default=None, description="when set, every read of a user's data (/users/..., the dashboard's user panel) "
        "needs it in X-API-Key; unset: such reads are open, except exclude_seen=false and explain=true, which need "
        "STREAMREC_API_KEY whenever that is set",
    )
    publish_impressions: bool = Field(default=True, description="publish what each GET served, for attribution")
    user_history_events: int = Field(
        default=20, ge=0, le=1000, description="batches of each user's recent events kept in Redis for the "
        "dashboard's user panel (0: none)",
    )
    reports_dir: Path = Field(default=Path("reports"), description="backtest reports (report.md, report.png in "
                              "each folder) the dashboard lists")
    similar_k: int = Field(default=20, ge=0, le=1000, description="length of stored similar-item lists (0: none)")
    similar_refresh_s: float = Field(default=2.0, ge=0)

    state_dir: Path = STATE_DIR

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def impressions_topic(self) -> str:
        """What the API served (recomm_id, items, strategies), keyed by user like the events."""
        return f"{self.topic}.impressions"

    @property
    def item_deltas_topic(self) -> str:
        """What each worker's learning changed in item state, for the other workers."""
        return f"{self.topic}.item-deltas"

    @property
    def checkpoints_topic(self) -> str:
        """The workers' checkpoints, when ``checkpoint_store`` is kafka (compacted)."""
        return f"{self.topic}.checkpoints"

    @property
    def control_topic(self) -> str:
        """Commands for the worker (forget a user), keyed by user like the events."""
        return f"{self.topic}.control"


@lru_cache
def get_settings() -> Settings:
    return Settings()
