GenerationResult = generate = None
