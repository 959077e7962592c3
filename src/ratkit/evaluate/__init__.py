"""Evaluation: the fixed protocol as tables, the run, the report (:mod:`.protocol`), and the
per-batch results on disk that let an interrupted evaluation resume (:mod:`.chunks`);
``rat eval``'s work behind its flags (:mod:`.command`, not imported here)."""

from .chunks import AttackChunks, ChunkStore, fingerprint
from .protocol import (ATTACK_TITLES, ATTACKS, DEFAULT_ATTACKS, PAPER_CW_KAPPA, PAPER_EPS, PROTOCOL_ATTACKS, PROTOCOLS,
                       AttackResult, EvalReport, ProtocolAttack, check_protocol_norm, evaluate, evaluate_test_set,
                       format_report, paper_eps, paper_step, parse_attacks, protocol_attack, restore_generator,
                       save_adversarial, strict_float32, summary_block, worst_case_examples, write_per_example_csv,
                       write_report_files)
