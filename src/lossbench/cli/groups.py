"""Option groups: options that travel together, declared once as a frozen dataclass.

Each field of a group is a typer option (`name: Annotated[type, typer.Option(...)] = default`).
A command decorated with `@option_groups` takes a group as one parameter (`ci: CiOptions`):
the decorator shows typer the group's fields as the command's options, in field order where
the parameter stands, and hands the command the group rebuilt from their values. Field names
are the option names, so they must not clash with the command's other parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

Command = Callable[..., None]


def is_group(annotation: object) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def group_options(group: type[Any]) -> list[inspect.Parameter]:
    """A group's fields as keyword parameters carrying their typer options and defaults."""
    hints = typing.get_type_hints(group, include_extras=True)  # the aliases, resolved
    return [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=_default(field),
            annotation=hints[field.name],
        )
        for field in dataclasses.fields(group)
    ]


def _default(field: dataclasses.Field[Any]) -> Any:
    """A field's default; none makes the option required."""
    return inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default


def option_groups(command: Command) -> Command:
    """`command` with each parameter annotated by a group replaced by the group's options."""
    signature = inspect.signature(command, eval_str=True)
    groups: dict[str, type[Any]] = {}
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if is_group(parameter.annotation):
            groups[parameter.name] = parameter.annotation
            parameters += group_options(parameter.annotation)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = {name: [field.name for field in dataclasses.fields(g)] for name, g in groups.items()}

    @functools.wraps(command)
    def with_groups(**given: Any) -> None:
        for name, group in groups.items():
            given[name] = group(**{field: given.pop(field) for field in names[name]})
        command(**given)

    # typer reads the options from the signature and their types from the annotations
    with_groups.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_groups.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_groups
