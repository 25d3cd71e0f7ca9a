"""The doc-block parser and the output comparison of ``support.docblocks`` (no processes)."""

from __future__ import annotations

import textwrap

import pytest

from support.docblocks import compare, console_steps, normalise_line, parse_markdown

PAGE = textwrap.dedent("""\
    # A page

    <!-- doc-test: skip (needs remote machines over SSH) -->
    ```console
    $ grid agents deploy -c cluster.yaml
    ✓ m1: installed
    ```

    ```python
    print("hi")
    ```
    ```text
    hi
    ```

    <!-- doc-test: continue -->
    ```python
    print(2)
    ```

    1. A list item:
       ```console
       $ echo a \\
         b
       a b
       $ true
       ```
    ```
    bare
    ```
    """)


def test_blocks_come_with_language_line_directives_and_output():
    blocks = parse_markdown(PAGE, "p.md")
    assert [(b.id, b.lang) for b in blocks] == [
        ("p.md:4", "console"), ("p.md:9", "python"), ("p.md:12", "text"), ("p.md:17", "python"),
        ("p.md:22", "console"), ("p.md:28", "")]
    assert blocks[0].directives == {"skip": "needs remote machines over SSH"}
    assert blocks[1].output is blocks[2] and blocks[1].output.text == "hi\n"
    assert blocks[3].directives == {"continue": ""} and blocks[3].output is None
    assert blocks[4].text.startswith("$ echo a")  # the list's indentation is taken off


def test_directives_stack_and_take_a_file_name():
    page = ("<!-- doc-test: ray -->\n<!-- doc-test: file short.yaml -->\n<!-- example: x -->\n"
            "```yaml\nray: {}\n```\n")
    assert parse_markdown(page, "p.md")[0].directives == {"ray": "", "file": "short.yaml"}


def test_a_directive_belongs_only_to_the_block_right_after_it():
    blocks = parse_markdown("<!-- doc-test: fresh -->\nSome text.\n```bash\ntrue\n```\n", "p.md")
    assert blocks[0].directives == {}


def test_console_steps_split_commands_and_output_with_page_lines():
    block = parse_markdown(PAGE, "p.md")[4]
    steps = console_steps(block)
    assert [(s.command, s.expected, s.line) for s in steps] == [
        ("echo a \n  b", ["a b"], 23), ("true", [], 26)]


def test_output_before_a_command_is_refused():
    block = parse_markdown("```console\noops\n$ true\n```\n", "p.md")[0]
    with pytest.raises(ValueError, match="before the first"):
        console_steps(block)


@pytest.mark.parametrize("doc, actual", [
    ("✓ local-1: started (pid 5634)", "✓ local-1: started (pid 1)"),
    ("Block ID: block_0_local-2_hoft6qz2k4", "Block ID: block_12_local-2_hp0000aaaa"),
    ("state and logs: /root/.local/state/mesh/local-mesh", "state and logs: /tmp/x/state"),
    ("│ local-1 │ tcp://127.0.0.1:7700 │ alive │ 5634 │ 4.00 GiB │",
     "│ local-1   │ tcp://127.0.0.1:43210 │ alive │ 77 │ 16.00 GiB │"),
    ("┏━━━━━┳━━━━┓", "┏━━━━━━━━━━━━━┳━━┓"),
    ("│ notes │ 2026-11-26 07:18:30 │", "│ notes │ 2027-01-02 12:00:01 │"),
    ("  \"checksum\": \"crc32:819b4372\",", "  \"checksum\": \"crc32:0000abcd\","),
    ("00000000  1b 8f 66 d0 bf 44 ea fa 47 fe dd 98 a1 2c b4 fd  |..f..D..G....,..|",
     "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|"),
    ("Used: 0 B of 12.00 GB", "Used: 1.50 GB of 12.00 GB"),
    ("parent pid 10617: stored 'example-shared-10617'", "parent pid 9: stored 'example-shared-27176'"),
    ("moved block_0_node1_hoi96aphbc in 0.04 s, reserved as alloc_1795656430_node1_1248",
     "moved block_3_node1_hp11 in 1.5 s, reserved as alloc_1795699999_node1_ab12"),
    ("Target: node2  1.00 GiB  (Ray node 69572939)", "Target: node2  1.00 GiB  (Ray node 08363d1d)"),
    ("master vm: pressure 0.10", "master ci-runner-7: pressure 0.55"),
])
def test_what_varies_between_runs_is_not_a_difference(doc, actual):
    assert compare([doc], [actual]) == []


@pytest.mark.parametrize("doc, actual", [
    ("✓ local-1: started (pid 5634)", "✓ local-1: started, pid 5634"),       # another message
    ("┃ Node ┃ State ┃ Used ┃", "┃ Node ┃ State ┃ Used ┃ Note ┃"),            # a new column
    ("┃ Node ┃ State ┃", "┃ Node ┃ Status ┃"),                                  # a renamed one
    ("✓ Allocated 1.50 GB", "✓ Allocated 1.50 GiB"),                           # another unit
    ("Node: local-1", "Node: local-2"),                                        # another node
    ("stored 'example-1'", "stored 'example-2'"),                             # a name's number
    ("│ local-1 │ 1.50 GB │", "┃ local-1 ┃ 1.50 GB ┃"),                        # a row become a header
    ("Target: node2  1  (Ray node 69572939)", "Target: node3  1  (Ray node 08363d1d)"),  # a node
    ("master vm: pressure 0.10", "node vm: pressure 0.10"),                     # not the master
])
def test_a_changed_word_column_or_unit_is_a_difference(doc, actual):
    diff = compare([doc], [actual], first_line=40)
    assert diff[0] == f"  - doc line 40: {doc}"
    assert diff[1] == f"  + actual:       {actual}"


def test_a_missing_or_extra_line_is_a_difference_and_blank_lines_are_not():
    doc = ["✓ local-1: stopped (pid 1)", "", "✓ local-2: stopped (pid 2)"]
    assert compare(doc, ["✓ local-1: stopped (pid 9)", "✓ local-2: stopped (pid 8)", ""]) == []
    assert compare(doc, ["✓ local-1: stopped (pid 9)"]) == [
        "  - doc line 3: ✓ local-2: stopped (pid 2)"]
    extra = compare(doc, [*doc, "✓ local-3: stopped (pid 3)"])
    assert extra == ["  + actual:       ✓ local-3: stopped (pid 3)"]


def test_an_ellipsis_stands_for_any_number_of_lines_but_not_for_a_changed_one():
    doc = ["{", '  "blocks": [', "...", "  ],", '  "failed_nodes": {}', "}"]
    run = ["{", '  "blocks": [', "    {", '      "size": 1', "    }", "  ],",
           '  "failed_nodes": {}', "}"]
    assert compare(doc, run) == []
    assert compare(doc, run[:2] + run[5:]) == []  # zero lines is fine too
    assert compare(doc, run[:6]) != []  # the end is missing
    changed = [*run[:-2], '  "failed": {}', "}"]
    assert any("failed_nodes" in line for line in compare(doc, changed))


def test_table_rows_compare_by_cells_not_by_width():
    assert normalise_line("│ local-1 │ alive │      1 │  1.50 GB │") == \
        normalise_line("│ local-1   │ alive │ 12 │ 3.00 GB │") == "| local-1 | alive | N | <size>"
    assert normalise_line("┃ Node    ┃ State ┃") == "H| Node | State"
    assert normalise_line("└─────────┴───────┘") == "<table-bottom>"
    assert normalise_line("───── m1 (/tmp/ms/d1/state/m1.log) ─────") == "── m1 (<path>) ──"


def test_a_doc_id_stands_for_the_real_one_once_an_output_showed_it():
    from support.docblocks import learn_ids, with_ids

    ids: dict[str, str] = {}
    learn_ids(["✓ Allocated 10.00 MiB", "Block ID: block_0_local-2_hoftrzctiv", "Node: local-2"],
              ["✓ Allocated 10.00 MiB", "Block ID: block_3_local-2_hp99zz", "Node: local-2"], ids)
    assert with_ids("grid memory deallocate block_0_local-2_hoftrzctiv", ids) == \
        "grid memory deallocate block_3_local-2_hp99zz"
    learn_ids(["Block ID: block_1_local-1_aaaa11", "Node: local-1"],
              ["Block ID: block_1_local-3_bbbb22", "Node: local-3"], ids)  # did not match
    assert with_ids("block_1_local-1_aaaa11", ids) == "block_1_local-1_aaaa11"
