"""Prompt text shared by the specialists' training files and the lm-eval tasks.

The specialists are trained on exactly the prompt the tasks later score, so the format is
defined once, here: a doctor's instruction, the question, the lettered options, "Answer:".
"""
from __future__ import annotations

from typing import Any

MCQA_INSTRUCTION = {
    "en": "You are a medical doctor taking a licensing exam. Answer the multiple-choice "
          "question with the letter of the correct option.",
    "zh": "你是一名正在参加执业医师考试的医生。请回答下面的单项选择题，只需给出正确选项的字母。",
}
ANSWER_CUE = {"en": "Answer:", "zh": "答案："}
QA_INSTRUCTION = {
    "en": "You are a medical doctor. Answer the patient's question.",
    "zh": "你是一名医生，请回答患者的问题。",
}


def mcqa_query(record: dict[str, Any]) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in record["options"].items())
    return f"{record['question']}\n{options}\n{ANSWER_CUE[record['language']]}"


def mcqa_prompt(record: dict[str, Any]) -> str:
    return f"{MCQA_INSTRUCTION[record['language']]}\n{mcqa_query(record)}"


def qa_prompt(record: dict[str, Any]) -> str:
    return f"{QA_INSTRUCTION[record['language']]}\n{record['question']}"


def alpaca(record: dict[str, Any]) -> dict[str, str]:
    """LLaMA-Factory's alpaca format; it joins instruction and input with a newline, so the
    model sees exactly mcqa_prompt / qa_prompt."""
    if "options" in record:
        return {"instruction": MCQA_INSTRUCTION[record["language"]],
                "input": mcqa_query(record), "output": record["answer"]}
    return {"instruction": QA_INSTRUCTION[record["language"]], "input": record["question"],
            "output": record["answer"]}
