"""Test helpers shared by the test modules (fakes and real loopback servers); not tests themselves."""
