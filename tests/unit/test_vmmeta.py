"""vmmeta: the VM's own facts round-trip through the domain metadata, and bad content names its field."""

from __future__ import annotations

import pytest

from evacuator.errors import VmMetadataError
from evacuator.hypervisor.facts import NAMESPACE_URI, MoveMethod, VmFacts, parse_facts, render_facts

NS = f'xmlns:evacuator="{NAMESPACE_URI}"'


@pytest.mark.parametrize(
    "facts",
    [
        VmFacts(),
        VmFacts(tenant="acme"),
        VmFacts(window_seconds=0),
        VmFacts(tenant="acme", window_seconds=600),
        VmFacts(tenant="t-1.example_corp", window_seconds=86_400),
        VmFacts(tenant="acme", group="db-cluster", boot_order=2, priority=-5, method=MoveMethod.LIVE),
        VmFacts(method=MoveMethod.LIVE_THEN_COLD, priority=10),
        VmFacts(tenant="acme", function="orders-db"),
        VmFacts(tenant="acme", group="shop", function="orders-db", boot_order=1, priority=3),
    ],
)
def test_rendered_facts_parse_back_equal(facts: VmFacts) -> None:
    assert parse_facts(render_facts(facts)) == facts


def test_render_uses_the_namespace_prefix_and_omits_absent_fields() -> None:
    assert render_facts(VmFacts(tenant="acme")) == (
        f"<evacuator:vm {NS}><evacuator:tenant>acme</evacuator:tenant></evacuator:vm>"
    )


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        # As libvirt 9 returns it from dom.metadata(ELEMENT, uri): prefix and namespace stripped.
        ("<vm>\n  <tenant>acme</tenant>\n  <window_seconds>600</window_seconds>\n</vm>",
         VmFacts(tenant="acme", window_seconds=600)),
        (f"<evacuator:vm {NS}><evacuator:window_seconds> 30 </evacuator:window_seconds></evacuator:vm>",
         VmFacts(window_seconds=30)),
        (f'<vm xmlns="{NAMESPACE_URI}"><tenant>acme</tenant></vm>', VmFacts(tenant="acme")),
        ("<vm><tenant>acme</tenant><colour>db</colour><affinity>3</affinity></vm>", VmFacts(tenant="acme")),
        ("<vm><group>db</group><boot_order>2</boot_order><priority>-3</priority><method>live</method></vm>",
         VmFacts(group="db", boot_order=2, priority=-3, method=MoveMethod.LIVE)),
        ("<vm><function> orders-db </function></vm>", VmFacts(function="orders-db")),
        ('<vm><x:tenant xmlns:x="urn:other">evil</x:tenant></vm>', VmFacts()),
        ("<vm/>", VmFacts()),
    ],
    ids=["libvirt-bare", "prefixed", "default-ns", "unknown-fields-ignored", "group-and-order", "function",
         "foreign-ns-ignored", "empty"],
)
def test_parse_accepts_the_forms_libvirt_and_newer_agents_write(xml: str, expected: VmFacts) -> None:
    assert parse_facts(xml) == expected


@pytest.mark.parametrize(
    ("xml", "named"),
    [
        ("<vm><window_seconds>-1</window_seconds></vm>", "'window_seconds'"),
        ("<vm><window_seconds>ten</window_seconds></vm>", "'window_seconds'"),
        ("<vm><window_seconds>1.5</window_seconds></vm>", "'window_seconds'"),
        ("<vm><window_seconds></window_seconds></vm>", "'window_seconds'"),
        ("<vm><window_seconds>\u0663</window_seconds></vm>", "'window_seconds'"),
        ("<vm><tenant></tenant></vm>", "'tenant'"),
        ("<vm><tenant>a b</tenant></vm>", "'tenant'"),
        (f"<vm><tenant>{'x' * 129}</tenant></vm>", "'tenant'"),
        ("<vm><tenant>a</tenant><tenant>b</tenant></vm>", "'tenant' appears more than once"),
        ("<host><tenant>a</tenant></host>", "root element <vm>"),
        ('<vm xmlns="urn:other"><tenant>a</tenant></vm>', "root element <vm>"),
        ("<vm><tenant>a</tenant>", "not well-formed"),
        ("<vm><method>teleport</method></vm>", "'method'.*one of cold, live, live_then_cold"),
        ("<vm><priority>high</priority></vm>", "'priority'"),
        ("<vm><group>a b</group></vm>", "'group'"),
        ("<vm><function>a b</function></vm>", "'function'"),
        ("<vm><function></function></vm>", "'function'"),
        ("<vm><function>db</function><function>db</function></vm>", "'function' appears more than once"),
    ],
)
def test_parse_rejects_bad_content_naming_the_field(xml: str, named: str) -> None:
    with pytest.raises(VmMetadataError, match=named.replace("(", r"\(")):
        parse_facts(xml)


@pytest.mark.parametrize(
    ("facts", "named"),
    [
        (VmFacts(window_seconds=-5), "'window_seconds'"),
        (VmFacts(window_seconds=True), "'window_seconds'"),
        (VmFacts(tenant=""), "'tenant'"),
        (VmFacts(tenant="two words"), "'tenant'"),
        (VmFacts(function="two words"), "'function'"),
        (VmFacts(function=""), "'function'"),
    ],
)
def test_render_rejects_bad_facts_naming_the_field(facts: VmFacts, named: str) -> None:
    with pytest.raises(VmMetadataError, match=named):
        render_facts(facts)
