"""The edit chain's inbox: JSONL request files dropped in FIRM_HOME/inbox/edit/ (or FIRM_EDIT_INBOX),
one dynamic partition each, imported by `edit_inbox_requests` into `inbox_edit_requests`;
`edit_requests` appends their rows (`inbox_edit_rows`) after its configured source."""

from pathlib import Path

from dagster import AssetExecutionContext, DynamicPartitionsDefinition, MaterializeResult

from firm_assets.curation.inbox import Inbox, import_files, inbox_asset, inbox_dir, read_imported, store_file
from firm_assets.edit.importer import read_edit_requests
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

EDIT_INBOX = Inbox(
    "edit", "FIRM_EDIT_INBOX", (".jsonl",), DynamicPartitionsDefinition(name="edit_inbox_files")
)


def import_edit_file(warehouse: Warehouse, name: str, run_id: str) -> dict[str, int | str]:
    """Import one edit-inbox file: its requests replace that file's earlier ones, bad lines are
    quarantined. Returns what was imported, for the materialization's metadata."""
    path = inbox_dir(EDIT_INBOX) / name
    requests, bad = read_edit_requests(path)
    root = str(path.parent.resolve())
    rows = [
        (r.request_id, r.instruction, r.requirement, r.image, list(r.edited_images), root, r.line)
        for r in requests
    ]
    return store_file(warehouse, EDIT_INBOX, name, "inbox_edit_requests", rows, bad, run_id)


def inbox_edit_rows(warehouse: Warehouse) -> tuple[list[dict], dict[str, str]]:
    """The imported edit requests, in the entry asset's row shape plus `file`, by file then line
    (the order that decides which of two equal requests is the first), and each file's imported
    hash, read in one transaction so the hashes are those of the rows returned."""
    rows, hashes = read_imported(
        warehouse,
        EDIT_INBOX,
        "SELECT file, request_id, instruction, requirement, image, edited_images, images_root, line"
        " FROM inbox_edit_requests ORDER BY file, line",
    )
    requests = [
        {
            "file": file,
            "request_id": request_id,
            "instruction": instruction,
            "requirement": requirement,
            "image": image,
            "edited_images": list(edited),
            "images_root": root,
            "source": str(Path(root) / file),
            "line": line,
        }
        for file, request_id, instruction, requirement, image, edited, root, line in rows
    ]
    return requests, hashes


@inbox_asset(EDIT_INBOX, code_version="edit_inbox@1")
def edit_inbox_requests(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """One edit-inbox JSONL file (the partition key is its name; a backfill imports a range in one
    run) imported into inbox_edit_requests; bad lines quarantined with a reason."""
    return import_files(context, warehouse, import_edit_file)
