"""Connected components of the candidate graph: distributed over mailboxes, or on the driver.

Both return, for every node of a component with more than one node, the edge (node, root) where
root is the component's smallest node (string order); roots themselves get no row. So both give
identical tables, and a root can serve directly as the cluster's keeper when node keys sort in
keeper order.

The distributed path is the alternating large-star / small-star algorithm (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014): each step is one exchange through a mailbox
(`pipeline.mailbox`) with a box per node partition, each box handled vectorised in polars by its
own task, so no process ever holds all the edges.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.mailbox import BOX, deliver, post
from stages.dedup.lsh import EDGE_SCHEMA

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


def by_node(df: pl.DataFrame, partitions: int) -> pl.DataFrame:
    """Edges with the box of their `node` (a hash of it modulo `partitions`)."""
    return df.with_columns((pl.col("node").hash(ROUTING_SEED) % partitions).cast(pl.String).alias(BOX))


def both_directions(edges: pa.Table, partitions: int) -> pa.Table:
    """Each edge as (node, root) and (root, node), routed to the box of its `node`: large-star's input."""
    df = pl.from_arrow(edges.select(["node", "root"]))
    return by_node(pl.concat([df, df.select(node="root", root="node")]), partitions).to_arrow()


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


def _large_step(letters: pa.Table, box: str, partitions: int, to: Path) -> int:
    """Large-star on one box, its edges posted to the box of their larger end; returns edges changed."""
    out = large_star(letters)
    post(by_node(pl.from_arrow(out.select(["node", "root"])), partitions).to_arrow(), to, box)
    return int(pc.sum(out[CHANGED]).as_py() or 0)


def _small_step(letters: pa.Table, box: str, partitions: int, to: Path) -> int:
    """Small-star on one box, its edges posted in both directions for the next round; returns edges changed."""
    out = small_star(letters)
    post(both_directions(out, partitions), to, box)
    return int(pc.sum(out[CHANGED]).as_py() or 0)


def distributed_components(edges: Path, scratch: Path, partitions: int) -> Path:
    """Alternate large-star and small-star until neither changes an edge.

    `edges` is a mailbox holding every edge in both directions (`both_directions`); the result is
    a mailbox (in `scratch`) in the same form, from whose boxes `component_edges` takes (node, root).
    """
    current, round_ = edges, 0
    while True:
        large, after = scratch / f"large-{round_}", scratch / f"round-{round_ + 1}"
        changed = sum(deliver(current, functools.partial(_large_step, partitions=partitions, to=large)))
        changed += sum(deliver(large, functools.partial(_small_step, partitions=partitions, to=after)))
        shutil.rmtree(large, ignore_errors=True)
        if current != edges:
            shutil.rmtree(current, ignore_errors=True)
        if changed == 0:
            return after
        current, round_ = after, round_ + 1


def component_edges(letters: pa.Table) -> pa.Table:
    """A box of `distributed_components`'s result as (node, root) rows, each node once."""
    df = pl.from_arrow(letters.select(["node", "root"])).filter(pl.col("node") > pl.col("root")).unique()
    return df.sort("node").to_arrow().cast(EDGE_SCHEMA)
