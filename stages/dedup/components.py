"""Connected components of the candidate graph: distributed on Ray Data, or on the driver.

Both return, for every node of a component with more than one node, the edge (node, root) where
root is the component's smallest node (string order); roots themselves get no row. So both give
identical tables, and a root can serve directly as the cluster's keeper when node keys sort in
keeper order.

The distributed path is the alternating large-star / small-star algorithm (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014): each step is one Ray Data groupby over node
partitions, each partition handled vectorised in polars, so no process ever holds all the edges.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import ray
from ray.data.grouped_data import GroupedData

from stages.dedup.lsh import EDGE_SCHEMA

PART = "_part"
CHANGED = "_changed"
# polars' hash is stable within one polars version: enough to route rows inside one run.
ROUTING_SEED = 20240601


def local_components(edges: pa.Table) -> pa.Table:
    """(node, root) on one machine: scipy's connected components over integer-coded nodes."""
    # imported here: the driver runs this, and Ray workers that import this module for the
    # distributed steps would carry scipy's ~18 MB for nothing
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    df = pl.from_arrow(edges.select(["node", "root"]))
    nodes = pl.concat([df["node"], df["root"]]).unique().sort()
    if nodes.is_empty():
        return EDGE_SCHEMA.empty_table()
    u = nodes.search_sorted(df["node"]).to_numpy()
    v = nodes.search_sorted(df["root"]).to_numpy()
    graph = coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    # nodes are sorted, so a component's smallest code is its smallest key
    first = np.full(labels.max() + 1, len(nodes))
    np.minimum.at(first, labels, np.arange(len(nodes)))
    roots = nodes.gather(first[labels])
    out = pl.DataFrame({"node": nodes, "root": roots}).filter(pl.col("node") != pl.col("root"))
    return out.to_arrow().cast(EDGE_SCHEMA)


def _route(df: pl.DataFrame, partitions: int) -> pl.DataFrame:
    return df.with_columns((pl.col("node").hash(ROUTING_SEED) % partitions).cast(pl.Int32).alias(PART))


def _both_directions(batch: pa.Table, partitions: int) -> pa.Table:
    df = pl.from_arrow(batch.select(["node", "root"]))
    both = pl.concat([df, df.select(node="root", root="node")])
    return _route(both, partitions).to_arrow()


def large_star(edges: pa.Table) -> pa.Table:
    """Each node links its larger neighbours to the smallest of its neighbourhood (itself included).

    Input: undirected edges listed in both directions as (node, root=neighbour). Output edges
    (larger, smaller); `_changed` marks an edge that was not already in the input.
    """
    df = pl.from_arrow(edges.select(["node", "root"])).unique().rename({"root": "nbr"})
    low = df.group_by("node").agg(low=pl.col("nbr").min())
    low = low.with_columns(low=pl.min_horizontal("low", "node"))
    out = df.join(low, on="node").filter(pl.col("nbr") > pl.col("node"))
    return out.select(node="nbr", root="low", **{CHANGED: (pl.col("low") != pl.col("node")).cast(pl.Int64)}).to_arrow()


def small_star(edges: pa.Table) -> pa.Table:
    """Each node links itself and its smaller neighbours to the smallest of them.

    Input: edges (larger, smaller) grouped by the larger end. Output edges (larger, smaller);
    `_changed` marks nodes with more than one smaller neighbour, whose edges get rewired.
    """
    df = pl.from_arrow(edges.select(["node", "root"])).unique()
    low = df.group_by("node").agg(low=pl.col("root").min(), fan=pl.len())
    rewired = df.join(low, on="node").filter(pl.col("root") != pl.col("low")).select(
        node="root", root="low", **{CHANGED: pl.lit(1, pl.Int64)})
    own = low.select("node", root="low", **{CHANGED: (pl.col("fan") > 1).cast(pl.Int64)})
    return pl.concat([own, rewired]).to_arrow()


def by_partition(ds: ray.data.Dataset, partitions: int) -> GroupedData:
    """Group on the `_part` column (the sort-based shuffle is set in `pipeline.runtime`)."""
    return ds.groupby(PART, num_partitions=partitions)


def _grouped(ds: ray.data.Dataset, step, partitions: int) -> ray.data.Dataset:
    def run(group: pa.Table) -> pa.Table:
        return step(group)

    run.__name__ = step.__name__
    return by_partition(ds, partitions).map_groups(run, batch_format="pyarrow").materialize()


def _edges_only(batch: pa.Table) -> pa.Table:
    return batch.select(EDGE_SCHEMA.names).cast(EDGE_SCHEMA)


def _changes(ds: ray.data.Dataset) -> int:
    return int(ds.sum(CHANGED) or 0)


def distributed_components(edges: ray.data.Dataset, partitions: int) -> ray.data.Dataset:
    """(node, root) over Ray Data: alternate large-star and small-star until neither changes an edge."""

    def route(batch: pa.Table) -> pa.Table:
        return _route(pl.from_arrow(batch.select(["node", "root"])), partitions).to_arrow()

    current = edges
    while True:
        large = _grouped(current.map_batches(_both_directions, fn_kwargs={"partitions": partitions},
                                             batch_format="pyarrow"), large_star, partitions)
        small = _grouped(large.map_batches(route, batch_format="pyarrow"), small_star, partitions)
        current = small.map_batches(_edges_only, batch_format="pyarrow")
        if _changes(large) == 0 and _changes(small) == 0:
            return current
