"""Fix plugins (entry-point group `m3d_doctor.fixes`); filled by the fix issues."""
