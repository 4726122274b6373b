"""distributed_batch: a big batch fanned out as chunk flow runs of the batch deployment (flow),
split into chunks (plan), started and watched (watch), and gathered from the archive (gather).
The deployment entrypoint `gptimg_flows.distributed:distributed_batch` is public."""

from gptimg_flows.distributed.flow import distributed_batch

__all__ = ["distributed_batch"]
