"""The steps of one move between two open hypervisors, each re-reading where the VM really is before it
acts: cold (cold.py, with a pre-copy while the guest shuts down), live, a consistency group's joint
shutdown, and the final verify and clean-up they share. steps.py holds the values, stepper.py runs the
steps and reports them, factory.py builds each kind with the engine's timings (a new step goes into a
migrator's plan; a new kind of move gets its module and a factory method)."""
