"""The gen chain's inbox: prompt files (.json lists, GenEval .jsonl, .txt) dropped in
FIRM_HOME/inbox/gen/ (or FIRM_GEN_INBOX), one dynamic partition each, imported by `gen_inbox_prompts`
into `inbox_gen_prompts`; `gen_prompts` appends them (`inbox_prompts`) after its configured files."""

from dagster import AssetExecutionContext, DynamicPartitionsDefinition, MaterializeResult

from firm_assets.curation.inbox import Inbox, import_files, inbox_asset, inbox_dir, read_imported, store_file
from firm_assets.gen.importers import GenPrompt, read_prompts
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

GEN_INBOX = Inbox(
    "gen", "FIRM_GEN_INBOX", (".json", ".jsonl", ".txt"), DynamicPartitionsDefinition(name="gen_inbox_files")
)


def import_gen_file(warehouse: Warehouse, name: str, run_id: str) -> dict[str, int | str]:
    """Import one gen-inbox file (format by suffix, as `read_prompts`): its prompts replace that
    file's earlier ones; bad entries and repeats within the file are quarantined."""
    path = inbox_dir(GEN_INBOX) / name
    imported = read_prompts(path)
    rows = [(p.prompt_id, p.prompt, p.locator, p.tag, p.geneval) for p in imported.prompts]
    bad = imported.bad + imported.duplicates
    return store_file(warehouse, GEN_INBOX, name, "inbox_gen_prompts", rows, bad, run_id)


def inbox_prompts(warehouse: Warehouse) -> tuple[list[GenPrompt], dict[str, str]]:
    """The imported prompts, by file (a file holds no repeats: its import quarantined them), and each
    file's imported hash, read in one transaction so the hashes are those of the prompts returned."""
    rows, hashes = read_imported(
        warehouse,
        GEN_INBOX,
        "SELECT file, prompt_id, prompt, locator, tag, geneval FROM inbox_gen_prompts"
        " ORDER BY file, prompt_id",
    )
    folder = inbox_dir(GEN_INBOX)
    prompts = [
        GenPrompt(prompt_id, prompt, str(folder / file), locator, tag, geneval)
        for file, prompt_id, prompt, locator, tag, geneval in rows
    ]
    return prompts, hashes


@inbox_asset(GEN_INBOX, code_version="gen_inbox@1")
def gen_inbox_prompts(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """One gen-inbox prompt file (.json list, GenEval .jsonl, .txt; the partition key is its name;
    a backfill imports a range in one run) imported into inbox_gen_prompts; bad entries and repeats
    quarantined with a reason."""
    return import_files(context, warehouse, import_gen_file)
