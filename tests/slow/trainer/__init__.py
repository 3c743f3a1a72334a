"""Tests of the trainer (kubetune.trainer): unit tests of its logic and real two-process training runs."""
