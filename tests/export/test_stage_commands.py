"""The commands embedrt-export adds to ``embedrt``: registered through entry points, listed as the runtime
lists them where the export stage is missing, and flags left unset giving the options' own defaults."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

from embedrt.cli import build_parser, export_stage
from embedrt_export import ExportOptions, QuantizeOptions
from embedrt_export.cli.options import build_options, export_options, quantize_options
from embedrt_export.trt import BuildOptions


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_commands_are_entry_points_of_this_distribution() -> None:
    found = {ep.name: ep.value for ep in entry_points(group=export_stage.GROUP)}
    assert found == {"export": "embedrt_export.cli.export_cmd:register",
                     "build": "embedrt_export.cli.build_cmd:register",
                     "quantize": "embedrt_export.cli.quantize_cmd:register"}


def test_help_lines_match_what_the_runtime_lists_without_them() -> None:
    listed = {action.dest: action.help for action in _subcommands(build_parser())._choices_actions}
    assert {name: listed[name] for name in export_stage.EXPORT_STAGE} == export_stage.EXPORT_STAGE


def test_unset_flags_give_the_dataclass_defaults() -> None:
    parser = build_parser()
    assert export_options(parser.parse_args(["export", "m", "--out", "o"])) == ExportOptions()
    assert quantize_options(parser.parse_args(["quantize", "a"])) == QuantizeOptions()
    assert build_options(parser.parse_args(["build", "a", "--precision", "fp16"])) == BuildOptions()


def test_flags_reach_the_options() -> None:
    parser = build_parser()
    options = export_options(parser.parse_args(["export", "m", "--out", "o", "--dtype", "fp16", "--dtype", "fp32,",
                                                "--max-length", "64", "--attention", "eager", "--overwrite"]))
    assert (options.dtypes, options.max_length, options.attention, options.overwrite) == (("fp16", "fp32"), 64,
                                                                                          "eager", True)
    options = quantize_options(parser.parse_args(["quantize", "a", "--target", "cpu", "--per-tensor-tolerance", "-1",
                                                  "--smoothquant", "--exclude", "*.mlp.*", "--calibration", "c.txt"]))
    assert (options.qdq_graph, options.cpu_variant, options.per_tensor_tolerance, options.smoothquant,
            options.exclude, str(options.calibration)) == (False, True, None, 0.5, ("*.mlp.*",), "c.txt")
    options = build_options(parser.parse_args(["build", "a", "--precision", "fp16,int8", "--target", "sm89,8.6",
                                               "--max-batch-tokens", "4096", "--no-verify"]))
    assert (options.precisions, options.targets, options.batching.max_batch_tokens, options.verify) == (
        ("fp16", "int8"), ("89", "86"), 4096, False)
