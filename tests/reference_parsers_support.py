"""The reference code's teacher-output parsers (PaLM `_parse_*` and GPT `_parse_gpt_output`), transcribed
as test oracles. The GPT rules differ from the PaLM ones by also stripping the head's leading whitespace
(and, for cqa/anli1, by their fallbacks); the shared pieces live here once."""
import functools
import re


def _head(output, marker, lstrip):
    """The text before the first `marker`, right-stripped (and left-stripped under the GPT rules)."""
    head = output.split(marker)[0].rstrip()
    return head.lstrip() if lstrip else head


def reference_cqa_label(label):
    try:
        label = re.split(r"\(.\)", label)[1].strip()
        label = label if label[-1] != "." else label[:-1]
    except Exception:
        label = " "
    return label


def reference_cqa(output):
    """PaLM rule; raises where the reference raises (no 'So the answer is')."""
    rationale, label = _head(output, "Q:", lstrip=False).split("So the answer is")
    return rationale.rstrip(), reference_cqa_label(label)


def reference_cqa_gpt(output):
    try:
        rationale, label = _head(output, "Q:", lstrip=True).split("So the answer is")
    except Exception:
        return " ", " "
    return rationale.rstrip(), reference_cqa_label(label)


def reference_svamp(output, lstrip=False):
    """PaLM rule; `lstrip=True`: the GPT rule."""
    try:
        rationale, label = _head(output, "Q:", lstrip).split("The answer is")
    except Exception:
        return " ", " "
    rationale = rationale.rstrip()
    try:
        label = re.search(r"\(.*\)", label).group(0)
    except Exception:
        label = " "
    return rationale, label


def reference_esnli(output, lstrip=False):
    """PaLM rule; `lstrip=True`: the GPT rule."""
    rationale = _head(output, "Answer:", lstrip)
    try:
        label = output.split("Answer: ")[1].split("Premise")[0].rstrip()
    except Exception:
        label = " "
    return rationale, label


def reference_anli1(output):
    try:
        rationale, label = _head(output, "Premise:", lstrip=False).split("So the answer is")
    except Exception:
        rationale, label = "", ""
    return rationale.rstrip(), label.lstrip()[:-1]


def reference_anli1_gpt(output):
    head = _head(output, "Premise:", lstrip=True)
    try:
        rationale, label = head.split("So the answer is")
    except Exception:
        try:
            rationale, label = head.split("The answer is")
        except Exception:
            rationale, label = "", ""
    return rationale.rstrip(), label.lstrip()[:-1]


REFERENCE = {"cqa": reference_cqa, "svamp": reference_svamp, "arith": reference_svamp,
             "esnli": reference_esnli, "anli1": reference_anli1}
REFERENCE_GPT = {"cqa": reference_cqa_gpt, "svamp": functools.partial(reference_svamp, lstrip=True),
                 "esnli": functools.partial(reference_esnli, lstrip=True), "anli1": reference_anli1_gpt}
