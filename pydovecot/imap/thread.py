"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES, exactly as RFC 5256 section 3.

Input is a list of :class:`ThreadMessage` (built by :func:`from_data` from
the storage's ``threading`` data of each message, i.e. from headers that
anyone could have written: Message-IDs may be missing, duplicated, or form
loops — all of that is handled, never trusted); output is the
``thread-list`` text of the ``* THREAD`` response.  No I/O here, and no
recursion over the trees (a message with thousands of References makes
them thousands of levels deep).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydovecot.storage.parsed import message_ids

__all__ = ["ThreadMessage", "dismantle", "from_data", "message_ids", "ordered_subject",
           "references", "render"]


@dataclass(eq=False)
class ThreadMessage:
    """What threading needs of one message."""

    ident: int  # sequence number or UID, as it appears in the answer
    order: int  # mailbox order, the tie-breaker
    date: float  # sent date (RFC 5256 2.2), UTC seconds
    subject: str  # base subject, case-folded
    reply: bool  # base subject extraction removed Re:/Fwd: marks
    message_id: str | None = None
    references: list[str] = field(default_factory=list)  # References, or In-Reply-To


def from_data(ident: int, order: int, data: Any) -> ThreadMessage:
    """A ThreadMessage from the storage's ``threading`` data item (a dict
    of JSON values: checked, since it crossed the storage boundary)."""
    if not isinstance(data, dict):
        data = {}
    refs = data.get("references")
    mid = data.get("message_id")
    date = data.get("date")
    return ThreadMessage(
        ident=ident, order=order,
        date=float(date) if isinstance(date, int | float) else 0.0,
        subject=str(data.get("subject") or ""),
        reply=bool(data.get("reply")),
        message_id=mid if isinstance(mid, str) else None,
        references=[r for r in refs if isinstance(r, str)] if isinstance(refs, list) else [],
    )


@dataclass(eq=False)
class Node:
    """A container: a message, or a dummy (msg is None) holding children."""

    msg: ThreadMessage | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def add(self, child: Node) -> None:
        child.parent = self
        self.children.append(child)

    def remove(self, child: Node) -> None:
        self.children.remove(child)
        child.parent = None

    def sort_key(self) -> tuple[float, int]:
        node = self
        while node.msg is None:
            node = node.children[0]  # dummies are sorted after their children
        return node.msg.date, node.msg.order


def _would_loop(parent: Node, child: Node) -> bool:
    """True if making ``parent`` the parent of ``child`` makes a cycle."""
    if not child.children:
        return parent is child  # a leaf is nobody's ancestor
    node: Node | None = parent
    while node is not None:
        if node is child:
            return True
        node = node.parent
    return False


def _preorder(roots: Iterable[Node]) -> list[Node]:
    """Every node under ``roots``, parents before children (no recursion:
    a References chain makes trees thousands of levels deep)."""
    out: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children)
    return out


# -- rendering ---------------------------------------------------------------------


def _render(root: Node) -> str:
    out: list[str] = []
    stack: list[Node | str] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = item
        sep = ""
        while True:
            if node.msg is not None:
                out.append(sep + str(node.msg.ident))
                sep = " "
                if len(node.children) == 1:
                    node = node.children[0]
                    continue
            if node.children:
                out.append(sep)
                for child in reversed(node.children):
                    stack += [")", child, "("]
            break
    return "".join(out)


def render(roots: Iterable[Node]) -> str:
    """The thread-list: ``(1 2)(3 (4)(5))((6)(7))``."""
    return "".join("(" + _render(r) + ")" for r in roots)


def dismantle(roots: Iterable[Node]) -> None:
    """Drop the parent links (cycles) of a rendered tree, so reference
    counting frees it without waiting for the cyclic GC."""
    for node in _preorder(roots):
        node.parent = None


# -- ORDEREDSUBJECT ------------------------------------------------------------------


def ordered_subject(msgs: list[ThreadMessage]) -> list[Node]:
    """Group by base subject; each thread is its earliest message with the
    others (by sent date) as its children; threads by their first date."""
    groups: dict[str, list[ThreadMessage]] = {}
    for m in sorted(msgs, key=lambda m: (m.subject, m.date, m.order)):
        groups.setdefault(m.subject, []).append(m)
    roots: list[Node] = []
    for members in groups.values():
        root = Node(members[0])
        for m in members[1:]:
            root.add(Node(m))
        roots.append(root)
    roots.sort(key=Node.sort_key)
    return roots


# -- REFERENCES ----------------------------------------------------------------------


def references(msgs: list[ThreadMessage]) -> list[Node]:
    """The RFC 5256 REFERENCES algorithm (steps 1-7)."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    # (1) link messages by their references
    for m in sorted(msgs, key=lambda m: m.order):
        node: Node | None = None
        if m.message_id is not None:
            node = table.get(m.message_id)
            if node is not None and node.msg is not None:
                node = None  # a duplicate Message-ID: this one gets a unique id
            elif node is None:
                node = table[m.message_id] = Node()
                nodes.append(node)
        if node is None:
            node = Node()  # no (usable) Message-ID: unique and unreferenced
            nodes.append(node)
        node.msg = m
        # (1A) each reference is the parent of the next
        prev: Node | None = None
        for ref in m.references:
            cur = table.get(ref)
            if cur is None:
                cur = table[ref] = Node()
                nodes.append(cur)
            if prev is not None and cur.parent is None and not _would_loop(prev, cur):
                prev.add(cur)
            prev = cur
        # (1B) the last reference is this message's parent
        if node.parent is not None:
            node.parent.remove(node)
        if prev is not None and not _would_loop(prev, node):
            prev.add(node)
    # (2) the root set; (3) the id table is no longer needed
    roots = [n for n in nodes if n.parent is None]
    del table
    # (4) prune dummies
    roots = _prune(roots, at_root=True)
    # (5) sort the root set (a dummy's children first, by their first child)
    for r in roots:
        if r.msg is None:
            r.children.sort(key=Node.sort_key)
    roots.sort(key=Node.sort_key)
    # (6) merge threads with the same base subject
    roots = _merge_subjects(roots)
    # (7) sort every sibling set, deepest first
    _sort_tree(roots)
    roots.sort(key=Node.sort_key)
    return roots


def _pruned(node: Node, at_root: bool) -> list[Node]:
    """What stands in for ``node`` after step 4 (its children are done)."""
    if node.msg is None:
        if not node.children:
            return []  # (4A)
        if not at_root or len(node.children) == 1:
            for child in node.children:  # (4B) promote
                child.parent = None
            return node.children
    return [node]


def _prune(nodes: list[Node], at_root: bool) -> list[Node]:
    for node in reversed(_preorder(nodes)):  # children before their parents
        kept: list[Node] = []
        for child in node.children:
            kept.extend(_pruned(child, at_root=False))
        node.children = kept
        for child in kept:
            child.parent = node
    out: list[Node] = []
    for node in nodes:
        out.extend(_pruned(node, at_root))
    return out


def _subject_of(node: Node) -> ThreadMessage:
    while node.msg is None:
        node = node.children[0]
    return node.msg


def _merge_subjects(roots: list[Node]) -> list[Node]:
    # (6A, 6B) the subject table
    table: dict[str, Node] = {}
    for node in roots:
        m = _subject_of(node)
        if not m.subject:
            continue
        old = table.get(m.subject)
        if old is None:
            table[m.subject] = node
            continue
        old_m = _subject_of(old)
        if old.msg is not None and (node.msg is None or (old_m.reply and not m.reply)):
            table[m.subject] = node
    # (6C) merge; the table entry of a subject is never later in the root
    # order than a message it absorbs, except a dummy or non-reply that
    # replaced it, which then takes the earlier ones in.
    out: list[Node] = []
    for node in roots:
        m = _subject_of(node)
        other = table.get(m.subject) if m.subject else None
        if other is None or other is node:
            out.append(node)
            continue
        if node.msg is None and other.msg is None:
            for child in list(node.children):
                node.remove(child)
                other.add(child)
        elif other.msg is None:
            other.add(node)
        elif node.msg is None:
            node.add(other)  # not reached: a dummy always wins the table
            table[m.subject] = node
            out.append(node)
        elif m.reply and not _subject_of(other).reply:
            other.add(node)
        else:
            dummy = Node()
            if other in out:
                _replace(out, other, dummy)
            else:
                out.append(dummy)
            dummy.add(other)
            dummy.add(node)
            table[m.subject] = dummy
    return [n for n in out if n.parent is None]


def _replace(nodes: list[Node], old: Node, new: Node) -> None:
    for i, n in enumerate(nodes):
        if n is old:
            nodes[i] = new
            return


def _sort_tree(nodes: list[Node]) -> None:
    for node in reversed(_preorder(nodes)):  # deepest first
        node.children.sort(key=Node.sort_key)
